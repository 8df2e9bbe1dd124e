//! Typed, validated settings: a TOML file plus `TANDEM_VAULT__<SECTION>__<KEY>` environment
//! overrides (e.g. `TANDEM_VAULT__DATABASE__URL`). Every limit carries its unit in its name.
//! A bad value stops the process at start with one line naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use tandem_runtime::admission::{ClassLimits, LimitSettings};
pub use tandem_runtime::binary::ServiceSettings;
pub use tandem_runtime::settings::{
    Check, ConfigError, DatabaseSettings, SecretString, ServerSettings, TlsSettings, first_failure,
};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TANDEM_VAULT__";

/// All vault settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gRPC server.
    pub server: ServerSettings,
    /// Mutual TLS.
    pub tls: TlsSettings,
    /// Limits per caller identity and RPC class.
    pub limits: LimitSettings,
    /// The vault's own Postgres database.
    pub database: DatabaseSettings,
    /// Root and data keys.
    pub keys: KeySettings,
    /// Token lifecycle and listing.
    pub tokens: TokenSettings,
    /// The audit writer.
    pub audit: AuditSettings,
    /// Charging limits.
    pub charges: ChargeSettings,
    /// The processor connector.
    pub connector: ConnectorSettings,
    /// The Prometheus metrics endpoint (loopback port 9464 by default).
    pub metrics: MetricsSettings,
    /// Traces (OpenTelemetry over OTLP; off by default).
    pub telemetry: TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::listening_on(SocketAddr::from(([127, 0, 0, 1], 50051))),
            tls: TlsSettings::dev("vault-server"),
            // The vault's callers are orchestrator instances carrying every payer's charges,
            // and tokenizing services: far more per caller than a single payer sends.
            limits: LimitSettings {
                read: ClassLimits::new(2_000, 512),
                write: ClassLimits::new(2_000, 1_024),
                ..LimitSettings::default()
            },
            database: DatabaseSettings::local("tandem_vault"),
            keys: KeySettings::default(),
            tokens: TokenSettings::default(),
            audit: AuditSettings::default(),
            charges: ChargeSettings::default(),
            connector: ConnectorSettings::default(),
            metrics: MetricsSettings::on_port(9464),
            telemetry: TelemetrySettings::default(),
        }
    }
}

/// The Prometheus metrics endpoint (`[metrics]`, on loopback port 9464 by default).
pub use tandem_runtime::metrics::MetricsSettings;
/// Traces (`[telemetry]`).
pub use tandem_runtime::telemetry::TelemetrySettings;

/// Where the root key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootKeySource {
    /// A key file made at first start (mode 0600), for development only.
    Dev,
    /// Shamir shares held by custodians: the vault starts sealed and is unsealed through
    /// `KeyAdminService/Unseal` (`tandemctl keys init` makes the key and its shares).
    Shares,
}

/// Key settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// Root key source.
    pub root_key_source: RootKeySource,
    /// The dev root key file (`root_key_source = "dev"`).
    pub dev_root_key_path: PathBuf,
    /// Encryptions one data key version may perform: well under the 2^32 random-nonce bound.
    pub dek_encryptions_max: u64,
    /// Encryptions reserved from the database per round trip; unused ones at a crash are lost
    /// from the budget, never reused.
    pub dek_reservation_block: u64,
    /// Most card rows the background rewrap re-encrypts per second.
    pub rewrap_rows_per_s_max: u64,
    /// Rows re-encrypted per rewrap transaction.
    pub rewrap_batch_max: u32,
    /// How often the rewrap looks for rows under older data-key versions when idle.
    pub rewrap_interval_ms: u64,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            root_key_source: RootKeySource::Dev,
            dev_root_key_path: PathBuf::from(".tandem/dev/root.key"),
            dek_encryptions_max: 1 << 30,
            dek_reservation_block: 4096,
            rewrap_rows_per_s_max: 1000,
            rewrap_batch_max: 100,
            rewrap_interval_ms: 1000,
        }
    }
}

/// Token lifecycle and listing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Longest time to live a token may be given, in seconds.
    pub ttl_seconds_max: i64,
    /// Default page size of `ListTokens`.
    pub page_size_default: u32,
    /// Largest page size of `ListTokens`; larger requests are clamped.
    pub page_size_max: u32,
    /// How often the purge job looks for tokens past their time to live.
    pub purge_interval_ms: u64,
    /// Tokens purged per purge transaction.
    pub purge_batch_max: u32,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            ttl_seconds_max: 5 * 365 * 24 * 3600,
            page_size_default: 50,
            page_size_max: 100,
            purge_interval_ms: 60_000,
            purge_batch_max: 500,
        }
    }
}

/// The audit writer: every mutation and its audit row commit together in batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Most operations committed in one transaction.
    pub batch_size_max: usize,
    /// Operations waiting for the writer; callers beyond this wait for room.
    pub queue_max: usize,
    /// Writer tasks committing batches at once, each on its own connection (at most
    /// `database.connections_max - 1`, leaving one for reads).
    pub writer_tasks: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            batch_size_max: 256,
            queue_max: 4096,
            writer_tasks: 4,
        }
    }
}

/// Charging limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChargeSettings {
    /// Largest amount one `Authorize` may hold, in minor units of any currency.
    pub amount_minor_max: i64,
    /// How often the recovery job re-drives charges whose processor call was interrupted
    /// (a crash, a timeout, a cancelled caller).
    pub recovery_interval_ms: u64,
    /// A pending charge or operation is left to its caller for this long before the recovery
    /// job resolves it.
    pub recovery_after_ms: u64,
    /// Charges resolved per recovery pass.
    pub recovery_batch_max: u32,
}

impl Default for ChargeSettings {
    fn default() -> Self {
        Self {
            amount_minor_max: 100_000_000_000,
            recovery_interval_ms: 10_000,
            recovery_after_ms: 30_000,
            recovery_batch_max: 100,
        }
    }
}

/// The processor connector that charges cards.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorSettings {
    /// The connector: `sandbox` (the built-in simulated acquirer) is the only one built in.
    pub kind: String,
    /// Longest wait for one processor call; after it the outcome is unknown and the charge
    /// stays pending until resolved.
    pub timeout_ms: u64,
    /// Consecutive transport failures (timeouts, unreachable processor) that open the circuit
    /// breaker.
    pub breaker_failures_max: u32,
    /// How long an open breaker refuses calls before it lets one probe through.
    pub breaker_open_ms: u64,
    /// The statement descriptor used when a charge gives none.
    pub statement_descriptor_default: String,
    /// Sandbox: tasks acting on groups of operations at once, each on its own connection
    /// (fewer than `database.connections_max`).
    pub sandbox_group_tasks: usize,
    /// Sandbox: most operations one group's transaction acts on.
    pub sandbox_group_size_max: usize,
    /// Sandbox: operations waiting for a group; callers beyond this wait for room.
    pub sandbox_queue_max: usize,
    /// Most records of one settlement file the connector delivers: a larger day is refused
    /// (`SETTLEMENT_FILE_TOO_LARGE`) rather than held in memory (about 130 bytes a record).
    pub settlement_file_records_max: u64,
}

impl Default for ConnectorSettings {
    fn default() -> Self {
        Self {
            kind: "sandbox".to_owned(),
            timeout_ms: 5_000,
            breaker_failures_max: 5,
            breaker_open_ms: 10_000,
            statement_descriptor_default: "TANDEM".to_owned(),
            sandbox_group_tasks: 2,
            sandbox_group_size_max: 64,
            sandbox_queue_max: 4096,
            settlement_file_records_max: 1_000_000,
        }
    }
}

impl Settings {
    /// Reads `path` (if any), applies overrides from `env` (pairs of name and value; pass
    /// `std::env::vars()`), and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        tandem_runtime::binary::load_service(path, env)
    }
}

impl ServiceSettings for Settings {
    const ENV_PREFIX: &'static str = ENV_PREFIX;

    fn common(&self) -> (&ServerSettings, &TlsSettings, &DatabaseSettings) {
        (&self.server, &self.tls, &self.database)
    }

    fn limits(&self) -> &LimitSettings {
        &self.limits
    }

    fn observability(&self) -> (&MetricsSettings, &TelemetrySettings) {
        (&self.metrics, &self.telemetry)
    }

    /// Checks every value's range; the first failure names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        let common =
            tandem_runtime::settings::common_checks(&self.server, &self.tls, &self.database);
        let checks: [Check; 18] = [
            (
                (1..=1 << 32).contains(&self.keys.dek_encryptions_max),
                "keys.dek_encryptions_max",
                "must be 1 to 4294967296",
            ),
            (
                (1..=1 << 20).contains(&self.keys.dek_reservation_block)
                    && self.keys.dek_reservation_block <= self.keys.dek_encryptions_max,
                "keys.dek_reservation_block",
                "must be 1 to 1048576 and at most keys.dek_encryptions_max",
            ),
            (
                self.tokens.ttl_seconds_max > 0,
                "tokens.ttl_seconds_max",
                "must be positive",
            ),
            (
                (1..=1000).contains(&self.tokens.page_size_max)
                    && (1..=self.tokens.page_size_max).contains(&self.tokens.page_size_default),
                "tokens.page_size_default",
                "must be 1 to tokens.page_size_max (at most 1000)",
            ),
            (
                (100..=86_400_000).contains(&self.tokens.purge_interval_ms)
                    && (1..=100_000).contains(&self.tokens.purge_batch_max),
                "tokens.purge_interval_ms",
                "must be 100 to 86400000 (and tokens.purge_batch_max 1 to 100000)",
            ),
            (
                (1..=10_000).contains(&self.audit.batch_size_max),
                "audit.batch_size_max",
                "must be 1 to 10000",
            ),
            (
                (1..=1_000_000).contains(&self.audit.queue_max),
                "audit.queue_max",
                "must be 1 to 1000000",
            ),
            (
                (1..=64).contains(&self.audit.writer_tasks)
                    && (self.audit.writer_tasks as u32) < self.database.connections_max,
                "audit.writer_tasks",
                "must be 1 to 64 and less than database.connections_max",
            ),
            (
                (1..=1_000_000).contains(&self.keys.rewrap_rows_per_s_max)
                    && (1..=10_000).contains(&self.keys.rewrap_batch_max)
                    && (10..=3_600_000).contains(&self.keys.rewrap_interval_ms),
                "keys.rewrap_rows_per_s_max",
                "must be 1 to 1000000 (and keys.rewrap_batch_max 1 to 10000, \
                 keys.rewrap_interval_ms 10 to 3600000)",
            ),
            (
                (1..=1_000_000_000_000_000).contains(&self.charges.amount_minor_max),
                "charges.amount_minor_max",
                "must be 1 to 1000000000000000",
            ),
            (
                (100..=3_600_000).contains(&self.charges.recovery_interval_ms)
                    && (1..=10_000).contains(&self.charges.recovery_batch_max),
                "charges.recovery_interval_ms",
                "must be 100 to 3600000 (and charges.recovery_batch_max 1 to 10000)",
            ),
            (
                self.charges.recovery_after_ms > self.connector.timeout_ms
                    && self.charges.recovery_after_ms <= 86_400_000,
                "charges.recovery_after_ms",
                "must exceed connector.timeout_ms and be at most 86400000",
            ),
            (
                self.connector.kind == "sandbox",
                "connector.kind",
                "must be \"sandbox\" (the only connector built in)",
            ),
            (
                (1..=600_000).contains(&self.connector.timeout_ms)
                    && self.connector.timeout_ms < self.server.request_timeout_ms,
                "connector.timeout_ms",
                "must be 1 to 600000 and less than server.request_timeout_ms",
            ),
            (
                (1..=1000).contains(&self.connector.breaker_failures_max)
                    && (1..=3_600_000).contains(&self.connector.breaker_open_ms)
                    && crate::domain::charge::StatementDescriptor::parse(
                        &self.connector.statement_descriptor_default,
                    )
                    .is_ok_and(|d| !d.as_str().is_empty()),
                "connector.breaker_failures_max",
                "must be 1 to 1000 (and connector.breaker_open_ms 1 to 3600000, \
                 connector.statement_descriptor_default a valid descriptor)",
            ),
            (
                (1..=16).contains(&self.connector.sandbox_group_tasks)
                    && (self.connector.sandbox_group_tasks as u32) < self.database.connections_max,
                "connector.sandbox_group_tasks",
                "must be 1 to 16 and less than database.connections_max",
            ),
            (
                (1..=1024).contains(&self.connector.sandbox_group_size_max)
                    && (1..=1_000_000).contains(&self.connector.sandbox_queue_max),
                "connector.sandbox_group_size_max",
                "must be 1 to 1024 (and connector.sandbox_queue_max 1 to 1000000)",
            ),
            (
                (1..=5_000_000).contains(&self.connector.settlement_file_records_max),
                "connector.settlement_file_records_max",
                "must be 1 to 5000000",
            ),
        ];
        first_failure(
            common
                .into_iter()
                .chain(self.limits.checks())
                .chain(self.metrics.checks())
                .chain(self.telemetry.checks())
                .chain(checks),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Defaults are valid; overrides reach nested keys with their types.
    #[test]
    fn overrides_apply() {
        let settings = Settings::load(
            None,
            env(&[
                ("TANDEM_VAULT__SERVER__LISTEN_ADDR", "127.0.0.1:0"),
                ("TANDEM_VAULT__DATABASE__CONNECTIONS_MAX", "6"),
                ("TANDEM_VAULT__DATABASE__URL", "postgres://u:p@h/db"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.server.listen_addr.port(), 0);
        assert_eq!(settings.database.connections_max, 6);
        assert_eq!(settings.database.url.expose(), "postgres://u:p@h/db");
        assert!(!format!("{settings:?}").contains("u:p@"));
    }

    /// The unauthenticated metrics endpoint stays on loopback unless explicitly allowed off it.
    #[test]
    fn metrics_stay_on_loopback() {
        let wide = [("TANDEM_VAULT__METRICS__LISTEN_ADDR", "0.0.0.0:9464")];
        match Settings::load(None, env(&wide)) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "metrics.listen_addr"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let allowed = [
            ("TANDEM_VAULT__METRICS__LISTEN_ADDR", "0.0.0.0:9464"),
            ("TANDEM_VAULT__METRICS__ALLOW_NON_LOOPBACK", "true"),
        ];
        assert!(Settings::load(None, env(&allowed)).is_ok());
    }

    /// The example file documents every key with its default: it parses, and it says what the
    /// code's defaults are.
    #[test]
    fn example_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vault.example.toml");
        let example = Settings::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(format!("{example:?}"), format!("{:?}", Settings::default()));
    }

    /// Bad values stop with a message naming the key.
    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "TANDEM_VAULT__SERVER__REQUEST_TIMEOUT_MS",
                "0",
                "request_timeout_ms",
            ),
            (
                "TANDEM_VAULT__SERVER__LISTEN_ADDR",
                "nowhere",
                "invalid socket address",
            ),
            ("TANDEM_VAULT__SERVER__NO_SUCH_KEY", "1", "no_such_key"),
            (
                "TANDEM_VAULT__AUDIT__BATCH_SIZE_MAX",
                "0",
                "audit.batch_size_max",
            ),
            (
                "TANDEM_VAULT__CONNECTOR__SANDBOX_GROUP_TASKS",
                "0",
                "connector.sandbox_group_tasks",
            ),
            (
                "TANDEM_VAULT__CONNECTOR__SANDBOX_GROUP_SIZE_MAX",
                "100000",
                "connector.sandbox_group_size_max",
            ),
        ];
        for (key, value, expected) in cases {
            let error = Settings::load(None, env(&[(key, value)])).unwrap_err();
            assert!(error.to_string().contains(expected), "{key}: {error}");
        }
    }
}
