//! The simulated vault and acquirer: charges with the vault's rules (an answer per request id,
//! replayed for a repeated one; a capture of at most the hold, only of an authorized charge; a
//! void only of an authorized one; refunds of at most what was captured) and cards that approve, approve in part, decline with each
//! next action, or have their captures refused by the processor.

use std::collections::HashMap;

use tandem_orchestrator::domain::record::steps::AuthorizeAnswer;
use tandem_orchestrator::domain::saga::NextAction;

/// How a simulated card answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The token.
    pub token: String,
    /// Declines before anything else, each with its advice and code.
    pub declines: Vec<(NextAction, &'static str)>,
    /// Approves half of what is asked (at least one minor unit) instead of all of it.
    pub partial: bool,
    /// The processor refuses this many captures of the card's charges (each new request).
    pub capture_refusals: u32,
}

/// A charge's state at the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeState {
    /// Holding `held`.
    Authorized,
    /// Captured `captured` of `held`.
    Captured,
    /// Released.
    Voided,
    /// Declined: never held money.
    Declined,
}

/// A charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The card.
    pub token: String,
    /// The request id that created it.
    pub request_id: String,
    /// Minor units held.
    pub held: i64,
    /// Minor units captured.
    pub captured: i64,
    /// Minor units refunded.
    pub refunded: i64,
    /// Its state.
    pub state: ChargeState,
}

/// A stored answer, replayed for its request id.
#[derive(Debug, Clone)]
enum Stored {
    Authorize(AuthorizeAnswer),
    Settle(Result<(), String>),
    Refund(Result<String, String>),
}

/// The vault with its acquirer.
#[derive(Debug, Default)]
pub struct Vault {
    cards: HashMap<String, Card>,
    charges: HashMap<String, Charge>,
    requests: HashMap<String, Stored>,
    /// Operations the processor carried out, by request id (each at most once).
    pub processor_calls: HashMap<String, u32>,
}

impl Vault {
    /// A vault knowing `cards`.
    pub fn new(cards: Vec<Card>) -> Vault {
        Vault {
            cards: cards.into_iter().map(|c| (c.token.clone(), c)).collect(),
            ..Vault::default()
        }
    }

    /// Every charge, by id.
    pub fn charges(&self) -> &HashMap<String, Charge> {
        &self.charges
    }

    fn processed(&mut self, request_id: &str) {
        *self
            .processor_calls
            .entry(request_id.to_owned())
            .or_default() += 1;
    }

    /// `Authorize`: the stored answer of `request_id`, or the card's.
    pub fn authorize(&mut self, request_id: &str, token: &str, amount: i64) -> AuthorizeAnswer {
        if let Some(Stored::Authorize(answer)) = self.requests.get(request_id) {
            return answer.clone();
        }
        self.processed(request_id);
        let charge_id = format!("ch_{}", self.charges.len() + 1);
        let card = self.cards.get_mut(token).expect("a known card");
        let (answer, held, state) = if !card.declines.is_empty() {
            let (next_action, code) = card.declines.remove(0);
            (
                AuthorizeAnswer::Declined {
                    charge_id: charge_id.clone(),
                    last4: "0001".into(),
                    decline_code: code.into(),
                    next_action,
                },
                0,
                ChargeState::Declined,
            )
        } else {
            let approved = if card.partial {
                (amount / 2).max(1)
            } else {
                amount
            };
            (
                AuthorizeAnswer::Approved {
                    charge_id: charge_id.clone(),
                    approved,
                    authorization_code: "A1".into(),
                    processor_reference: format!("ref_{charge_id}"),
                    last4: "0001".into(),
                },
                approved,
                ChargeState::Authorized,
            )
        };
        self.charges.insert(
            charge_id,
            Charge {
                token: token.to_owned(),
                request_id: request_id.to_owned(),
                held,
                captured: 0,
                refunded: 0,
                state,
            },
        );
        self.requests
            .insert(request_id.to_owned(), Stored::Authorize(answer.clone()));
        answer
    }

    /// `GetCharge` by request id: the answer to an authorization, if the vault has one.
    pub fn find_authorization(&self, request_id: &str) -> Option<AuthorizeAnswer> {
        match self.requests.get(request_id) {
            Some(Stored::Authorize(answer)) => Some(answer.clone()),
            _ => None,
        }
    }

    /// `Capture`: `Ok`, or the refusal's reason.
    pub fn capture(
        &mut self,
        request_id: &str,
        charge_id: &str,
        amount: i64,
    ) -> Result<(), String> {
        if let Some(Stored::Settle(answer)) = self.requests.get(request_id) {
            return answer.clone();
        }
        let answer = match self.charges.get_mut(charge_id) {
            None => Err("CHARGE_NOT_FOUND".to_owned()),
            Some(charge) if charge.state != ChargeState::Authorized => {
                Err("CHARGE_NOT_AUTHORIZED".to_owned())
            }
            Some(charge) if amount < 1 || amount > charge.held => {
                Err("AMOUNT_EXCEEDS_AUTHORIZED".to_owned())
            }
            Some(charge) => {
                let card = self.cards.get_mut(&charge.token).expect("a known card");
                if card.capture_refusals > 0 {
                    card.capture_refusals -= 1;
                    Err("PROCESSOR_REFUSED".to_owned())
                } else {
                    charge.state = ChargeState::Captured;
                    charge.captured = amount;
                    Ok(())
                }
            }
        };
        self.processed(request_id);
        self.requests
            .insert(request_id.to_owned(), Stored::Settle(answer.clone()));
        answer
    }

    /// `Refund`: the refund's id, or the refusal's reason.
    pub fn refund(
        &mut self,
        request_id: &str,
        charge_id: &str,
        amount: i64,
    ) -> Result<String, String> {
        if let Some(Stored::Refund(answer)) = self.requests.get(request_id) {
            return answer.clone();
        }
        let answer = match self.charges.get_mut(charge_id) {
            None => Err("CHARGE_NOT_FOUND".to_owned()),
            Some(charge) if charge.state != ChargeState::Captured => {
                Err("CHARGE_NOT_CAPTURED".to_owned())
            }
            Some(charge) if amount < 1 || charge.refunded + amount > charge.captured => {
                Err("AMOUNT_EXCEEDS_REFUNDABLE".to_owned())
            }
            Some(charge) => {
                charge.refunded += amount;
                Ok(format!("rf_{request_id}"))
            }
        };
        self.processed(request_id);
        self.requests
            .insert(request_id.to_owned(), Stored::Refund(answer.clone()));
        answer
    }

    /// `Void`: `Ok`, or the refusal's reason.
    pub fn void(&mut self, request_id: &str, charge_id: &str) -> Result<(), String> {
        if let Some(Stored::Settle(answer)) = self.requests.get(request_id) {
            return answer.clone();
        }
        let answer = match self.charges.get_mut(charge_id) {
            None => Err("CHARGE_NOT_FOUND".to_owned()),
            Some(charge) if charge.state == ChargeState::Authorized => {
                charge.state = ChargeState::Voided;
                Ok(())
            }
            Some(_) => Err("CHARGE_NOT_AUTHORIZED".to_owned()),
        };
        self.processed(request_id);
        self.requests
            .insert(request_id.to_owned(), Stored::Settle(answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(token: &str) -> Card {
        Card {
            token: token.into(),
            declines: vec![(NextAction::RetrySameCard, "PROCESSING_ERROR")],
            partial: false,
            capture_refusals: 1,
        }
    }

    /// A repeated request id replays its answer; a capture takes at most the hold, once; a
    /// refused capture stays refused for its request id and not for a new one.
    #[test]
    fn charge_rules() {
        let mut vault = Vault::new(vec![card("tok_a")]);
        let declined = vault.authorize("r1", "tok_a", 500);
        assert!(matches!(declined, AuthorizeAnswer::Declined { .. }));
        assert_eq!(vault.authorize("r1", "tok_a", 500), declined, "replayed");
        let AuthorizeAnswer::Approved { charge_id, .. } = vault.authorize("r2", "tok_a", 500)
        else {
            panic!("approved")
        };
        assert_eq!(
            vault.capture("c1", &charge_id, 600).unwrap_err(),
            "AMOUNT_EXCEEDS_AUTHORIZED"
        );
        assert_eq!(
            vault.capture("c2", &charge_id, 500).unwrap_err(),
            "PROCESSOR_REFUSED"
        );
        assert_eq!(
            vault.capture("c2", &charge_id, 500).unwrap_err(),
            "PROCESSOR_REFUSED"
        );
        assert_eq!(vault.capture("c3", &charge_id, 500), Ok(()));
        assert_eq!(
            vault.capture("c4", &charge_id, 500).unwrap_err(),
            "CHARGE_NOT_AUTHORIZED"
        );
        assert_eq!(
            vault.void("v1", &charge_id).unwrap_err(),
            "CHARGE_NOT_AUTHORIZED"
        );
        assert!(vault.refund("f1", &charge_id, 300).is_ok());
        assert!(vault.refund("f1", &charge_id, 300).is_ok(), "replayed");
        assert!(
            vault.refund("f2", &charge_id, 201).is_err(),
            "over what was captured"
        );
        assert!(vault.refund("f3", &charge_id, 200).is_ok());
        assert_eq!(vault.charges()[&charge_id].refunded, 500);
        assert!(vault.processor_calls.values().all(|&n| n == 1));
    }
}
