//! The simulated vault and acquirer: charges under the vault's own charge rules
//! (`tandem_vault::domain::charge_rules::decide`: a capture of at most the hold, only of an
//! authorized charge; a void only of one not captured; refunds of at most what was captured),
//! an answer per request id, replayed for a repeated one, and cards that approve, approve in part, decline with each
//! next action, or have their captures refused by the processor.

use std::collections::HashMap;

use tandem_money::{Currency, Money};
use tandem_orchestrator::domain::record::steps::AuthorizeAnswer;
use tandem_orchestrator::domain::saga::NextAction;
use tandem_vault::domain::charge::ChargeState as VaultState;
use tandem_vault::domain::charge_rules::{self, ChargeFacts, Decision, Operation};

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
    /// The card's currency, that of every amount of the charge.
    pub currency: Currency,
    /// Minor units held.
    pub held: i64,
    /// Minor units captured.
    pub captured: i64,
    /// Minor units refunded.
    pub refunded: i64,
    /// Refunds made.
    pub refunds: usize,
    /// Its state.
    pub state: ChargeState,
}

/// A stored answer, replayed for its request id.
#[derive(Debug, Clone)]
enum Stored {
    Authorize(AuthorizeAnswer),
    FollowUp(Result<String, String>),
}

/// The vault with its acquirer.
#[derive(Debug, Default)]
pub struct Vault {
    cards: HashMap<String, Card>,
    charges: HashMap<String, Charge>,
    requests: HashMap<String, Stored>,
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

    /// `Authorize`: the stored answer of `request_id`, or the card's.
    pub fn authorize(
        &mut self,
        request_id: &str,
        token: &str,
        currency: Currency,
        amount: i64,
    ) -> AuthorizeAnswer {
        if let Some(Stored::Authorize(answer)) = self.requests.get(request_id) {
            return answer.clone();
        }
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
                currency,
                held,
                captured: 0,
                refunded: 0,
                refunds: 0,
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

    /// Decides `operation` on `charge_id` by the vault's own charge rules
    /// (`tandem_vault::domain::charge_rules::decide`), applies what they allow and returns the
    /// answer (a refund's id for a refund), stored for `request_id` and replayed for it.
    fn follow_up(
        &mut self,
        request_id: &str,
        charge_id: &str,
        operation: impl Fn(Currency) -> Operation,
    ) -> Result<String, String> {
        if let Some(Stored::FollowUp(answer)) = self.requests.get(request_id) {
            return answer.clone();
        }
        let answer = match self.charges.get_mut(charge_id) {
            None => Err("CHARGE_NOT_FOUND".to_owned()),
            Some(charge) => {
                match charge_rules::decide(&charge.facts(), &operation(charge.currency)) {
                    Err(refusal) => Err(refusal.reason().to_owned()),
                    Ok(Decision::Capture { amount_minor }) => {
                        let card = self.cards.get_mut(&charge.token).expect("a known card");
                        if card.capture_refusals > 0 {
                            card.capture_refusals -= 1;
                            Err("PROCESSOR_REFUSED".to_owned())
                        } else {
                            charge.state = ChargeState::Captured;
                            charge.captured = amount_minor;
                            Ok(String::new())
                        }
                    }
                    Ok(Decision::Void) => {
                        charge.state = ChargeState::Voided;
                        Ok(String::new())
                    }
                    Ok(Decision::AlreadyReleased) => Ok(String::new()),
                    Ok(Decision::Refund { amount }) => {
                        charge.refunded += amount.minor_units;
                        charge.refunds += 1;
                        Ok(format!("rf_{request_id}"))
                    }
                }
            }
        };
        self.requests
            .insert(request_id.to_owned(), Stored::FollowUp(answer.clone()));
        answer
    }

    /// `Capture` of `amount`: `Ok`, or the refusal's reason.
    pub fn capture(
        &mut self,
        request_id: &str,
        charge_id: &str,
        amount: i64,
    ) -> Result<(), String> {
        self.follow_up(request_id, charge_id, |currency| Operation::Capture {
            amount: Some(Money::new(currency, amount)),
        })
        .map(drop)
    }

    /// `Void`: `Ok`, or the refusal's reason.
    pub fn void(&mut self, request_id: &str, charge_id: &str) -> Result<(), String> {
        self.follow_up(request_id, charge_id, |_| Operation::Void)
            .map(drop)
    }

    /// `Refund` of `amount`: the refund's id, or the refusal's reason.
    pub fn refund(
        &mut self,
        request_id: &str,
        charge_id: &str,
        amount: i64,
    ) -> Result<String, String> {
        self.follow_up(request_id, charge_id, |currency| Operation::Refund {
            amount: Money::new(currency, amount),
        })
    }
}

impl Charge {
    /// What the vault's charge rules read of the charge.
    fn facts(&self) -> ChargeFacts {
        let state = match self.state {
            ChargeState::Authorized => VaultState::Authorized,
            ChargeState::Voided => VaultState::Voided,
            ChargeState::Declined => VaultState::Declined,
            ChargeState::Captured if self.refunded == 0 => VaultState::Captured,
            ChargeState::Captured if self.refunded < self.captured => VaultState::PartiallyRefunded,
            ChargeState::Captured => VaultState::Refunded,
        };
        ChargeFacts {
            state,
            busy: false,
            approved: Money::new(self.currency, self.held),
            refundable_minor: self.captured - self.refunded,
            refunds: self.refunds,
        }
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

    /// A repeated request id replays its answer; the vault's rules: a capture takes at most the
    /// hold, once; no void after a capture; refunds up to what was captured. A refused capture
    /// stays refused for its request id and not for a new one.
    #[test]
    fn charge_rules() {
        let usd = Currency::parse("USD").unwrap();
        let mut vault = Vault::new(vec![card("tok_a")]);
        let declined = vault.authorize("r1", "tok_a", usd, 500);
        assert!(matches!(declined, AuthorizeAnswer::Declined { .. }));
        assert_eq!(
            vault.authorize("r1", "tok_a", usd, 500),
            declined,
            "replayed"
        );
        let AuthorizeAnswer::Approved { charge_id, .. } = vault.authorize("r2", "tok_a", usd, 500)
        else {
            panic!("approved")
        };
        assert_eq!(
            vault.capture("c1", &charge_id, 600).unwrap_err(),
            "AMOUNT_EXCEEDS_APPROVED"
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
            "CHARGE_ALREADY_CAPTURED"
        );
        assert!(vault.refund("f1", &charge_id, 300).is_ok());
        assert!(vault.refund("f1", &charge_id, 300).is_ok(), "replayed");
        assert!(
            vault.refund("f2", &charge_id, 201).is_err(),
            "over what was captured"
        );
        assert!(vault.refund("f3", &charge_id, 200).is_ok());
        assert_eq!(vault.charges()[&charge_id].refunded, 500);
    }
}
