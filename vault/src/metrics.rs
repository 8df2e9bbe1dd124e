//! Operation counters: how many vault calls and jobs ended with each outcome.
//!
//! The writer counts every audit row it commits (one source of truth: what is counted is what
//! was audited); the metrics endpoint ([`crate::scrape`]) renders them. This module depends on
//! nothing else in the vault.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Operation counters, fed by the writer.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Audited operations by (method, outcome).
    operations: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    /// Counts one committed audit row.
    pub fn record_operation(&self, rpc: &str, outcome: &str) {
        let mut operations = self
            .operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The label sets are bounded: methods and reasons are fixed strings of the vault.
        *operations
            .entry((rpc.to_owned(), outcome.to_owned()))
            .or_default() += 1;
    }

    /// A copy of the counters, for a scrape.
    pub(crate) fn operations(&self) -> BTreeMap<(String, String), u64> {
        self.operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
