//! The vault's metrics: every name, label and description in one place, recorded into the
//! process's registry ([`tandem_runtime::metrics`]) and served by the vault's endpoint (the
//! families `tandem_vault_*`; [`crate::scrape`] reads the gauges at each scrape).
//!
//! Labels are bounded: RPC method names, outcome reasons (fixed strings of the vault), the
//! connector's name and data-key versions. Never a token, a card's digits or a charge id.
//!
//! This module depends on nothing else in the vault.

/// Vault calls and jobs by method and outcome, as audited.
pub const OPERATIONS: &str = "tandem_vault_operations_total";
/// Calls refused because a card's stored data did not open: the integrity alarm.
pub const CARD_DATA_UNREADABLE: &str = "tandem_vault_card_data_unreadable_total";
/// 1 while the vault is sealed.
pub const SEALED: &str = "tandem_vault_sealed";
/// The connector's circuit breaker: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "tandem_vault_connector_breaker_state";
/// Times the connector's breaker opened.
pub const BREAKER_OPENED: &str = "tandem_vault_connector_breaker_opened_total";
/// Card rows sealed under each data-key version.
pub const DATA_KEY_ROWS: &str = "tandem_vault_data_key_rows";
/// Encryptions counted against each data-key version's budget.
pub const DATA_KEY_ENCRYPTIONS: &str = "tandem_vault_data_key_encryptions";
/// 1 for the data-key version that seals new cards.
pub const DATA_KEY_ACTIVE: &str = "tandem_vault_data_key_active";
/// Card rows still under older data-key versions.
pub const REWRAP_ROWS_REMAINING: &str = "tandem_vault_rewrap_rows_remaining";
/// Rows re-encrypted by the current rewrap.
pub const REWRAP_ROWS_DONE: &str = "tandem_vault_rewrap_rows_done";
/// The rewrap's rate over the last minute.
pub const REWRAP_ROWS_PER_SECOND: &str = "tandem_vault_rewrap_rows_per_second";
/// Time the processor took to answer a charge operation, by operation and outcome.
pub const CONNECTOR_SECONDS: &str = "tandem_vault_connector_call_seconds";
/// Writes run again after losing a serialization or deadlock race, by transaction.
pub const TRANSACTION_RETRIES: &str = "tandem_vault_transaction_retries_total";
/// Calls refused by admission (a caller over its limits), by class and reason.
pub const ADMISSION_REFUSALS: &str = "tandem_vault_admission_refusals_total";

/// Every family's name.
pub const ALL: [&str; 14] = [
    OPERATIONS,
    CARD_DATA_UNREADABLE,
    SEALED,
    BREAKER_STATE,
    BREAKER_OPENED,
    DATA_KEY_ROWS,
    DATA_KEY_ENCRYPTIONS,
    DATA_KEY_ACTIVE,
    REWRAP_ROWS_REMAINING,
    REWRAP_ROWS_DONE,
    REWRAP_ROWS_PER_SECOND,
    CONNECTOR_SECONDS,
    TRANSACTION_RETRIES,
    ADMISSION_REFUSALS,
];

/// Describes every family, and sets the alarm counter to zero so that it is always exported
/// (an alert on its increase then needs no label).
pub fn describe() {
    metrics::describe_counter!(
        ADMISSION_REFUSALS,
        "Calls refused with RESOURCE_EXHAUSTED by admission (a caller over its [limits]), by \
         class (read, write, stream) and reason (RATE_LIMITED, TOO_MANY_IN_FLIGHT)."
    );
    metrics::describe_counter!(
        OPERATIONS,
        "Vault calls and jobs by method and outcome (OK or the error reason), as audited."
    );
    metrics::describe_counter!(
        CARD_DATA_UNREADABLE,
        "Calls refused because a card's stored data did not open (corrupted or moved \
         ciphertext): an integrity alarm, see the key runbook."
    );
    metrics::counter!(CARD_DATA_UNREADABLE).increment(0);
    metrics::describe_counter!(
        TRANSACTION_RETRIES,
        "Writes run again after losing a serialization or deadlock race, by transaction."
    );
    metrics::describe_gauge!(SEALED, "1 while the vault is sealed.");
    metrics::describe_gauge!(
        BREAKER_STATE,
        "The connector's circuit breaker: 0 closed, 1 half-open, 2 open."
    );
    metrics::describe_counter!(
        BREAKER_OPENED,
        "Times the connector's circuit breaker opened."
    );
    metrics::describe_gauge!(
        DATA_KEY_ROWS,
        "Card rows sealed under each data-key version."
    );
    metrics::describe_gauge!(
        DATA_KEY_ENCRYPTIONS,
        "Encryptions counted against each data-key version's budget."
    );
    metrics::describe_gauge!(
        DATA_KEY_ACTIVE,
        "1 for the data-key version that seals new cards, 0 for the others."
    );
    metrics::describe_gauge!(
        REWRAP_ROWS_REMAINING,
        "Card rows still under older data-key versions."
    );
    metrics::describe_gauge!(REWRAP_ROWS_DONE, "Rows re-encrypted by the current rewrap.");
    metrics::describe_gauge!(REWRAP_ROWS_PER_SECOND, "Rewrap rate over the last minute.");
    metrics::describe_histogram!(
        CONNECTOR_SECONDS,
        metrics::Unit::Seconds,
        "Time the processor took to answer, by operation and outcome (ok for any answer, a \
         decline included; timeout, unavailable, circuit_open, storage, file_too_large)."
    );
}

/// Counts one committed audit row.
pub fn operation(rpc: &str, outcome: &str) {
    metrics::counter!(OPERATIONS, "rpc" => rpc.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
    if outcome == "CARD_DATA_UNREADABLE" {
        metrics::counter!(CARD_DATA_UNREADABLE).increment(1);
    }
}

/// Times one processor call of `operation` (`authorize`, `capture`, ...) that ended with
/// `outcome`.
pub fn connector_call(operation: &'static str, outcome: &'static str, took: std::time::Duration) {
    metrics::histogram!(CONNECTOR_SECONDS, "operation" => operation, "outcome" => outcome)
        .record(took.as_secs_f64());
}
