//! The simulated ledger: the transfers the real booking code makes, applied to accounts with
//! the ledger's rules (a transfer moves money within one currency; a pending transfer is posted
//! for at most its amount or voided, once; a transfer id is booked once).

use std::collections::BTreeMap;

use tandem_ledger::types::{Transfer, TransferKind};

/// One account's columns: pending debits and credits, posted debits and credits.
type Columns = [i64; 4];

/// Every account and every transfer booked.
#[derive(Debug, Default, Clone)]
pub struct Books {
    accounts: BTreeMap<String, Columns>,
    pending: BTreeMap<String, (String, String, i64)>,
    booked: BTreeMap<String, String>,
}

impl Books {
    /// Books `transfers` (one commit's); an error names the rule a transfer breaks.
    pub fn book(&mut self, transfers: &[Transfer]) -> Result<(), String> {
        for transfer in transfers {
            let id = transfer.id.as_str().to_owned();
            let shape = format!("{:?}", transfer.kind);
            if let Some(earlier) = self.booked.get(&id) {
                if *earlier != shape {
                    return Err(format!("transfer {id} booked twice, differently"));
                }
                continue;
            }
            self.booked.insert(id.clone(), shape);
            let (debit, credit, amount, posted) = match &transfer.kind {
                TransferKind::Single {
                    debit,
                    credit,
                    amount,
                } => (
                    debit.as_str().to_owned(),
                    credit.as_str().to_owned(),
                    *amount,
                    true,
                ),
                TransferKind::Pending {
                    debit,
                    credit,
                    amount,
                    ..
                } => {
                    let (debit, credit) = (debit.as_str().to_owned(), credit.as_str().to_owned());
                    self.pending
                        .insert(id.clone(), (debit.clone(), credit.clone(), *amount));
                    (debit, credit, *amount, false)
                }
                TransferKind::PostPending { pending_id, amount } => {
                    let (debit, credit, held) =
                        self.pending.remove(pending_id.as_str()).ok_or_else(|| {
                            format!("{id} posts {pending_id:?}, which is not pending")
                        })?;
                    let posted = amount.unwrap_or(held);
                    if posted > held {
                        return Err(format!("{id} posts {posted} of a hold of {held}"));
                    }
                    self.move_money(&debit, &credit, -held, false);
                    (debit, credit, posted, true)
                }
                TransferKind::VoidPending { pending_id } => {
                    let (debit, credit, held) =
                        self.pending.remove(pending_id.as_str()).ok_or_else(|| {
                            format!("{id} voids {pending_id:?}, which is not pending")
                        })?;
                    (debit, credit, -held, false)
                }
            };
            if currency(&debit) != currency(&credit) {
                return Err(format!("{id} moves money between currencies"));
            }
            if amount == 0 {
                return Err(format!("{id} moves nothing"));
            }
            self.move_money(&debit, &credit, amount, posted);
        }
        Ok(())
    }

    fn move_money(&mut self, debit: &str, credit: &str, amount: i64, posted: bool) {
        let column = if posted { 2 } else { 0 };
        self.accounts.entry(debit.to_owned()).or_default()[column] += amount;
        self.accounts.entry(credit.to_owned()).or_default()[column + 1] += amount;
    }

    /// Checks that every currency balances: its debits equal its credits, pending and posted.
    pub fn check_balanced(&self) -> Result<(), String> {
        let mut sums: BTreeMap<String, Columns> = BTreeMap::new();
        for (id, columns) in &self.accounts {
            let sum = sums.entry(currency(id)).or_default();
            for (total, column) in sum.iter_mut().zip(columns) {
                *total += column;
            }
        }
        for (currency, [pending_debit, pending_credit, debit, credit]) in sums {
            if pending_debit != pending_credit || debit != credit {
                return Err(format!("{currency} does not balance"));
            }
        }
        Ok(())
    }

    /// Pending transfers not posted or voided yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Posted debits and posted credits of account `id` (of a card's funding source: what the
    /// card paid, and what it got back).
    pub fn posted(&self, id: &str) -> (i64, i64) {
        self.accounts.get(id).map_or((0, 0), |a| (a[2], a[3]))
    }
}

/// The currency an account id ends with.
fn currency(id: &str) -> String {
    id[id.len().saturating_sub(3)..].to_owned()
}
