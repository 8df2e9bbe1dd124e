//! Typed, validated settings: a TOML file plus `TANDEM_ORCHESTRATOR__<SECTION>__<KEY>`
//! environment overrides (e.g. `TANDEM_ORCHESTRATOR__VAULT__ENDPOINT`). Every limit carries its
//! unit in its name. A bad value stops the process at start with one line naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_money::fx::Rate;
pub use tandem_runtime::admission::{ClassLimits, LimitSettings};
pub use tandem_runtime::binary::ServiceSettings;
pub use tandem_runtime::metrics::MetricsSettings;
pub use tandem_runtime::settings::{
    Check, ConfigError, DatabaseSettings, SecretString, ServerSettings, TlsSettings, first_failure,
};
pub use tandem_runtime::telemetry::TelemetrySettings;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TANDEM_ORCHESTRATOR__";

/// All orchestrator settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gRPC server.
    pub server: ServerSettings,
    /// Mutual TLS of the server.
    pub tls: TlsSettings,
    /// Limits per caller identity and RPC class.
    pub limits: LimitSettings,
    /// The orchestrator's Postgres database, which also holds the ledger.
    pub database: DatabaseSettings,
    /// How the orchestrator reaches the vault.
    pub vault: VaultSettings,
    /// Payment limits and the workflow's timing.
    pub payments: PaymentSettings,
    /// Limits of the ledger's reads (`LedgerService`).
    pub ledger: LedgerSettings,
    /// Reconciliation against the processors' settlement files.
    pub reconciliation: ReconciliationSettings,
    /// Webhooks: the delivery of events to the treasury's endpoints.
    pub webhook: WebhookSettings,
    /// Notifications that are events of their own (`payment.delayed`).
    pub notify: NotifySettings,
    /// The rate source of payments across currencies (`FxService`, the rates file).
    pub fx: FxSettings,
    /// Risk assessment and review.
    pub risk: RiskSettings,
    /// The Prometheus metrics endpoint (loopback port 9465 by default).
    pub metrics: MetricsSettings,
    /// Traces (OpenTelemetry over OTLP; off by default).
    pub telemetry: TelemetrySettings,
}

/// Risk (DESIGN section 12): how long a payment waits for a reviewer, and how often the
/// features' old buckets are pruned.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskSettings {
    /// How long a payment held for review waits, in seconds from when it is covered, before its
    /// holds are voided and it ends FAILED (`REVIEW_EXPIRED`). Card holds lapse after a few
    /// days, so at most 5 days.
    pub review_timeout_s: u64,
    /// How often old feature buckets and forgotten cards are deleted, in milliseconds.
    pub prune_interval_ms: u64,
}

impl Default for RiskSettings {
    fn default() -> Self {
        Self {
            review_timeout_s: 86_400,
            prune_interval_ms: 60_000,
        }
    }
}

/// The rate source (`FxService`, DESIGN section 10): how old a rate a payment may convert at,
/// the bounds every rate is checked against, and the rates file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FxSettings {
    /// The oldest a rate may be, in seconds from its as-of time, for a payment to convert at
    /// it; an older one is refused (`FX_RATE_STALE`).
    pub rate_age_s_max: u64,
    /// The smallest rate accepted (units of quote per unit of base), a decimal string such as
    /// `"0.000001"`: a smaller one is a typo, refused naming `rate.rate`.
    #[serde(deserialize_with = "rate_min")]
    pub rate_min: Rate,
    /// The largest rate accepted, a decimal string.
    #[serde(deserialize_with = "rate_max")]
    pub rate_max: Rate,
    /// A TOML file of rates (`[[rate]]` tables of `base`, `quote`, `rate`, `as_of`), read at
    /// start and again whenever it changes; empty for none.
    pub rates_path: PathBuf,
    /// How often the rates file is looked at for a change, in milliseconds.
    pub reload_interval_ms: u64,
}

impl Default for FxSettings {
    fn default() -> Self {
        // Constant decimals that parse (the config tests read them back).
        let rate = |text: &str| text.parse::<Rate>().expect("a constant rate parses");
        Self {
            rate_age_s_max: 86_400,
            rate_min: rate("0.000001"),
            rate_max: rate("1000000"),
            rates_path: PathBuf::new(),
            reload_interval_ms: 2_000,
        }
    }
}

/// `fx.rate_min`: see [`decimal_rate`].
fn rate_min<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
    decimal_rate(deserializer, "fx.rate_min")
}

/// `fx.rate_max`: see [`decimal_rate`].
fn rate_max<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
    decimal_rate(deserializer, "fx.rate_max")
}

/// The rate at `key`, given as a decimal string (`"0.9238"`) or, as an environment override
/// reads one, a TOML number; a bad one names `key`.
fn decimal_rate<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    key: &'static str,
) -> Result<Rate, D::Error> {
    struct Visitor(&'static str);
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Rate;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{}: a positive decimal string such as \"0.9238\"",
                self.0
            )
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Rate, E> {
            text.parse()
                .map_err(|e| E::custom(format!("{}: {e}", self.0)))
        }
        fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<Rate, E> {
            self.visit_str(&number.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<Rate, E> {
            self.visit_str(&number.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, number: f64) -> Result<Rate, E> {
            // Display writes the shortest decimal that reads back as the number, never an
            // exponent.
            self.visit_str(&number.to_string())
        }
    }
    deserializer.deserialize_any(Visitor(key))
}

/// Webhooks (`WebhookService`, DESIGN section 11): the key that seals endpoints' secrets, which
/// destinations may be reached, and the delivery worker's schedule and bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The key that seals endpoints' signing secrets (AES-256-GCM): the base64 of 32 bytes.
    /// Empty turns webhooks off: `WebhookService` answers FAILED_PRECONDITION
    /// `WEBHOOKS_NOT_CONFIGURED` and nothing is delivered.
    pub secret_key: SecretString,
    /// Hosts (names or addresses, as the endpoint's URL spells them) that may be reached over
    /// plain http and in private, loopback or link-local ranges: for development and tests.
    pub allow_hosts: Vec<String>,
    /// The schedule of a delivery's attempts, in milliseconds: the first attempt goes at once
    /// (the first entry, which must be 0), each later entry is the wait after a failure,
    /// lengthened by up to a tenth (jitter). A delivery that fails them all disables its
    /// endpoint.
    pub retry_schedule_ms: Vec<u64>,
    /// The longest `Retry-After` honoured, in seconds; a longer one waits this long.
    pub retry_after_max_s: u64,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after_s: u64,
    /// How long a rotated secret keeps signing beside the new one.
    pub rotation_overlap_s: u64,
    /// The time one attempt may take, from connecting to the answer's status.
    pub request_timeout_ms: u64,
    /// Attempts in flight at once on this instance, over all endpoints.
    pub concurrency_max: usize,
    /// Attempts in flight at once to one endpoint (as each instance sees the others' claims).
    pub endpoint_concurrency_max: usize,
    /// How often the worker looks for new events and due attempts when idle.
    pub poll_ms: u64,
    /// How long an instance's claim on an attempt holds before another may take it over; longer
    /// than `request_timeout_ms`.
    pub lease_ms: u64,
    /// Whether this instance delivers.
    pub worker_enabled: bool,
    /// Most endpoints.
    pub endpoints_max: i64,
    /// Most events one `RedeliverEvents` queues.
    pub redeliver_max: i64,
    /// How long delivered deliveries are kept (for `ListWebhookDeliveries` and redelivery).
    pub keep_days: u32,
    /// The trusted roots for https endpoints (a PEM bundle).
    pub roots_path: PathBuf,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secret_key: SecretString::new(""),
            allow_hosts: Vec::new(),
            retry_schedule_ms: vec![
                0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
            ],
            retry_after_max_s: 3_600,
            disable_after_s: 432_000,
            rotation_overlap_s: 86_400,
            request_timeout_ms: 10_000,
            concurrency_max: 64,
            endpoint_concurrency_max: 32,
            poll_ms: 100,
            lease_ms: 60_000,
            worker_enabled: true,
            endpoints_max: 100,
            redeliver_max: 100_000,
            keep_days: 30,
            roots_path: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        }
    }
}

/// Notifications that are events of their own.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// A payment not terminal this long after it was created gets a `payment.delayed` event.
    pub pending_after_s: u64,
    /// How often an instance looks for delayed payments, in milliseconds.
    pub interval_ms: u64,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            pending_after_s: 900,
            interval_ms: 5_000,
        }
    }
}

/// Reconciliation: which processors, the grace period, and the worker that reconciles each
/// closed day by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconciliationSettings {
    /// The processor (the vault's connector name) whose settlement files are reconciled. One:
    /// the ledger's entries do not record which processor took them, so a second processor's
    /// captures would look missing at the first.
    pub processor: String,
    /// How long after a capture or refund was booked its settlement record may still come:
    /// until then a ledger entry no file reported is PENDING, after it MISSING_AT_PROCESSOR.
    pub grace_s: u64,
    /// Whether this instance runs the worker.
    pub worker_enabled: bool,
    /// The hour (UTC) from which the worker reconciles the day before.
    pub run_hour_utc: u8,
    /// How many closed days back the worker looks for days not yet reconciled.
    pub lookback_days: u16,
    /// How often the worker looks, in seconds.
    pub interval_s: u64,
    /// How long a worker's claim on a day holds before another instance may take it over.
    pub claim_s: u64,
    /// Most records of one settlement file.
    pub file_records_max: usize,
}

impl Default for ReconciliationSettings {
    fn default() -> Self {
        Self {
            processor: "sandbox".to_owned(),
            grace_s: 172_800,
            worker_enabled: true,
            run_hour_utc: 2,
            lookback_days: 7,
            interval_s: 300,
            claim_s: 600,
            file_records_max: 2_000_000,
        }
    }
}

/// Limits of the ledger's reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSettings {
    /// Most entries per `ListEntries` page.
    pub page_size_max: i32,
    /// The longest time range (or span of days) one read may cover.
    pub range_days_max: i64,
    /// Most entries per `ExportLedger` chunk.
    pub export_chunk_max: i32,
    /// How long ago an export's range must have ended: transfers are numbered when written
    /// and committed a moment later, so a range still being written could gain an entry
    /// behind an export's cursor. Longer than any transaction that books transfers.
    pub export_settle_ms: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            page_size_max: 1000,
            range_days_max: 366,
            export_chunk_max: 10_000,
            export_settle_ms: 60_000,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::listening_on(SocketAddr::from(([127, 0, 0, 1], 50052))),
            tls: TlsSettings::dev("orchestrator-server"),
            limits: LimitSettings::default(),
            database: DatabaseSettings::local("tandem_orchestrator"),
            vault: VaultSettings::default(),
            payments: PaymentSettings::default(),
            ledger: LedgerSettings::default(),
            reconciliation: ReconciliationSettings::default(),
            webhook: WebhookSettings::default(),
            notify: NotifySettings::default(),
            fx: FxSettings::default(),
            risk: RiskSettings::default(),
            metrics: MetricsSettings::on_port(9465),
            telemetry: TelemetrySettings::default(),
        }
    }
}

/// The vault client: its address and the orchestrator's client identity (role
/// `orchestrator`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultSettings {
    /// The vault's URI, `https://host:port`.
    pub endpoint: String,
    /// The DNS name the vault's certificate must carry.
    pub server_name: String,
    /// The orchestrator's client certificate chain.
    pub cert_path: PathBuf,
    /// Its private key.
    pub key_path: PathBuf,
    /// The CA the vault's certificate must chain to.
    pub ca_path: PathBuf,
    /// Longest wait for one vault call (connection set-up included).
    pub timeout_ms: u64,
}

impl Default for VaultSettings {
    fn default() -> Self {
        let files = tandem_tls::TlsFiles::in_dir(Path::new(".tandem/dev"), "orchestrator");
        Self {
            endpoint: "https://127.0.0.1:50051".to_owned(),
            server_name: "localhost".to_owned(),
            cert_path: files.cert_path,
            key_path: files.key_path,
            ca_path: files.ca_path,
            timeout_ms: 5_000,
        }
    }
}

impl VaultSettings {
    /// The client identity as `tandem-tls` takes it.
    pub fn files(&self) -> tandem_tls::TlsFiles {
        tandem_tls::TlsFiles {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            ca_path: self.ca_path.clone(),
        }
    }
}

/// Payment limits and the workflow's timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentSettings {
    /// The largest invoice amount, in minor units.
    pub amount_minor_max: i64,
    /// How long an instance owns a payment it drives without renewing its lease; after that,
    /// another instance's recovery worker resumes it.
    pub lease_ms: u64,
    /// How often the recovery worker looks for payments whose lease expired.
    pub recovery_interval_ms: u64,
    /// Most payments the recovery worker takes per round.
    pub recovery_batch_max: i64,
    /// Payments driven at once by one instance (new and recovered); more wait for a slot.
    pub workflows_max: usize,
    /// How long a request waits for another transaction holding its `request_id` before it is
    /// told REQUEST_IN_PROGRESS.
    pub request_id_wait_ms: u64,
    /// Most payments' results written in one transaction by the results committer.
    pub results_batch_max: usize,
    /// Re-sends of a vault call whose answer was lost, within one drive of a payment, before
    /// leaving it to the recovery worker.
    pub vault_retries_max: u32,
    /// Refusals of one capture or void by the vault (the charge not captured or voided, and
    /// the vault saying it will not do it as asked) before the payment stops in
    /// NEEDS_OPERATOR; each refusal before that is sent again after a growing wait.
    pub settle_refusals_max: u32,
    /// The shortest wait before a card is tried again after a transient decline
    /// (`RETRY_SAME_CARD`) or a vault call is re-sent; each further try of the same card
    /// doubles it, up to `retry_delay_ms_max` (and never above a quarter of `lease_ms`), and
    /// every wait is jittered (half to all of it), so a hiccup's retries spread over seconds
    /// instead of landing in one burst.
    pub retry_delay_ms_min: u64,
    /// The longest of those waits.
    pub retry_delay_ms_max: u64,
    /// How long after its creation a payment keeps retrying a card that declined with
    /// `RETRY_SAME_CARD`; past it such a decline moves the amount on as `TRY_NEXT_CARD` does.
    pub retry_window_ms: u64,
    /// The longest `CreatePayment.wait_timeout_ms`.
    pub wait_timeout_ms_max: u64,
    /// The longest a `WatchPayment` stream stays open.
    pub watch_ms_max: u64,
    /// How often a `WatchPayment` stream looks for new events when not woken by this
    /// instance's own commits.
    pub watch_poll_ms: u64,
    /// Most card groups and payments per list page.
    pub page_size_max: i32,
    /// Most events per `ListEvents` page.
    pub events_page_size_max: i32,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            amount_minor_max: 100_000_000_000,
            lease_ms: 30_000,
            recovery_interval_ms: 1_000,
            recovery_batch_max: 100,
            workflows_max: 512,
            request_id_wait_ms: 2_000,
            results_batch_max: 64,
            vault_retries_max: 3,
            settle_refusals_max: 3,
            retry_delay_ms_min: 250,
            retry_delay_ms_max: 4_000,
            retry_window_ms: 30_000,
            wait_timeout_ms_max: 120_000,
            watch_ms_max: 300_000,
            watch_poll_ms: 250,
            page_size_max: 100,
            events_page_size_max: 1000,
        }
    }
}

impl PaymentSettings {
    /// `lease_ms` as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// `retry_window_ms` as a duration of the payment's age.
    pub fn retry_window(&self) -> time::Duration {
        time::Duration::milliseconds(i64::try_from(self.retry_window_ms).unwrap_or(i64::MAX))
    }

    /// The wait before try `tries + 1` of a card or a vault call (`tries` made so far, from
    /// 1): `retry_delay_ms_min` doubled per further try up to `retry_delay_ms_max` (and a
    /// quarter of `lease_ms`), then scaled into its upper half by `jitter` (0.0 to 1.0).
    pub fn retry_delay(&self, tries: u32, jitter: f64) -> Duration {
        let doubled = self
            .retry_delay_ms_min
            .saturating_mul(1 << tries.saturating_sub(1).min(20));
        // A wait never outlasts a quarter of the lease, so the payment's lease outlives it.
        let full = doubled
            .min(self.retry_delay_ms_max)
            .min(self.lease_ms / 4)
            .max(1);
        let jitter = jitter.clamp(0.0, 1.0);
        Duration::from_millis(full / 2 + ((full / 2) as f64 * jitter) as u64)
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
        let p = &self.payments;
        let l = &self.ledger;
        let r = &self.reconciliation;
        let w = &self.webhook;
        let n = &self.notify;
        let f = &self.fx;
        let k = &self.risk;
        let checks: [Check; 24] = [
            (
                (1..=432_000).contains(&k.review_timeout_s)
                    && (1_000..=3_600_000).contains(&k.prune_interval_ms),
                "risk.review_timeout_s",
                "must be 1 to 432000 (5 days; and risk.prune_interval_ms 1000 to 3600000)",
            ),
            (
                self.vault.endpoint.starts_with("https://"),
                "vault.endpoint",
                "must be an https:// URI (the vault speaks only mutual TLS)",
            ),
            (
                (1..=600_000).contains(&self.vault.timeout_ms),
                "vault.timeout_ms",
                "must be 1 to 600000",
            ),
            (
                (1..=p.retry_delay_ms_max).contains(&p.retry_delay_ms_min)
                    && p.retry_delay_ms_max <= 600_000
                    && (1..=3_600_000).contains(&p.retry_window_ms),
                "payments.retry_delay_ms_min",
                "must be 1 to payments.retry_delay_ms_max, which is at most 600000 \
                 (and payments.retry_window_ms 1 to 3600000)",
            ),
            (
                (1..=1_000_000_000_000_000).contains(&p.amount_minor_max),
                "payments.amount_minor_max",
                "must be 1 to 1000000000000000",
            ),
            (
                // A round re-sends an authorization (GetCharge, then Authorize) and commits
                // twice: its lease must outlast a few vault calls.
                p.lease_ms >= 4 * self.vault.timeout_ms && p.lease_ms <= 3_600_000,
                "payments.lease_ms",
                "must be at least 4 times vault.timeout_ms and at most 3600000",
            ),
            (
                (10..=3_600_000).contains(&p.recovery_interval_ms)
                    && (1..=10_000).contains(&p.recovery_batch_max),
                "payments.recovery_interval_ms",
                "must be 10 to 3600000 (and payments.recovery_batch_max 1 to 10000)",
            ),
            (
                (1..=100_000).contains(&p.workflows_max)
                    && (1..=1000).contains(&p.results_batch_max)
                    && (1..=60_000).contains(&p.request_id_wait_ms)
                    && p.vault_retries_max <= 100,
                "payments.workflows_max",
                "must be 1 to 100000 (and payments.results_batch_max 1 to 1000, \
                 payments.request_id_wait_ms 1 to 60000, \
                 payments.vault_retries_max at most 100)",
            ),
            (
                (1..=100).contains(&p.settle_refusals_max),
                "payments.settle_refusals_max",
                "must be 1 to 100",
            ),
            (
                (1..=3_600_000).contains(&p.wait_timeout_ms_max),
                "payments.wait_timeout_ms_max",
                "must be 1 to 3600000",
            ),
            (
                (1..=86_400_000).contains(&p.watch_ms_max)
                    && (10..=60_000).contains(&p.watch_poll_ms),
                "payments.watch_ms_max",
                "must be 1 to 86400000 (and payments.watch_poll_ms 10 to 60000)",
            ),
            (
                (1..=1000).contains(&p.page_size_max)
                    && (1..=1000).contains(&p.events_page_size_max),
                "payments.page_size_max",
                "must be 1 to 1000 (and payments.events_page_size_max 1 to 1000)",
            ),
            (
                (1..=1000).contains(&l.page_size_max)
                    && (1..=3660).contains(&l.range_days_max)
                    && (1..=100_000).contains(&l.export_chunk_max)
                    && l.export_settle_ms <= 86_400_000,
                "ledger.page_size_max",
                "must be 1 to 1000 (and ledger.range_days_max 1 to 3660, \
                 ledger.export_chunk_max 1 to 100000, ledger.export_settle_ms at most 86400000)",
            ),
            (
                (1..=32).contains(&r.processor.len())
                    && r.processor
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "reconciliation.processor",
                "must be 1-32 characters of a-z 0-9 _",
            ),
            (
                r.grace_s <= 30 * 86_400
                    && r.grace_s < u64::from(r.lookback_days) * 86_400
                    && r.run_hour_utc < 24
                    && (1..=366).contains(&r.lookback_days)
                    && (1..=86_400).contains(&r.interval_s)
                    && (1..=86_400).contains(&r.claim_s)
                    && (1..=crate::domain::reconciliation::FILE_RECORDS_MAX)
                        .contains(&r.file_records_max),
                "reconciliation.grace_s",
                "must be at most 2592000 and shorter than lookback_days (and \
                 reconciliation.run_hour_utc 0 to 23, lookback_days 1 to 366, interval_s and \
                 claim_s 1 to 86400, file_records_max 1 to 2000000)",
            ),
            (
                crate::webhooks::secrets::SealingKey::check(w.secret_key.expose()),
                "webhook.secret_key",
                "must be empty (webhooks off) or the base64 of 32 bytes",
            ),
            (
                w.allow_hosts.len() <= 100
                    && w.allow_hosts.iter().all(|h| (1..=253).contains(&h.len())),
                "webhook.allow_hosts",
                "must be at most 100 host names or addresses",
            ),
            (
                (1..=20).contains(&w.retry_schedule_ms.len())
                    && w.retry_schedule_ms.first() == Some(&0)
                    && w.retry_schedule_ms.iter().all(|ms| *ms <= 86_400_000),
                "webhook.retry_schedule_ms",
                "must be 1 to 20 waits of at most 86400000 ms, the first 0 (the first attempt \
                 goes at once)",
            ),
            (
                (1..=300_000).contains(&w.request_timeout_ms)
                    && w.lease_ms >= 2 * w.request_timeout_ms
                    && w.lease_ms <= 3_600_000,
                "webhook.request_timeout_ms",
                "must be 1 to 300000 (and webhook.lease_ms twice it at least, at most 3600000)",
            ),
            (
                (1..=10_000).contains(&w.concurrency_max)
                    && (1..=1_000).contains(&w.endpoint_concurrency_max)
                    && (10..=60_000).contains(&w.poll_ms)
                    && (1..=10_000).contains(&w.endpoints_max)
                    && (1..=10_000_000).contains(&w.redeliver_max)
                    && (1..=3_660).contains(&w.keep_days)
                    && w.retry_after_max_s <= 86_400
                    && (1..=31_536_000).contains(&w.disable_after_s)
                    && w.rotation_overlap_s <= 2_592_000,
                "webhook.concurrency_max",
                "must be 1 to 10000 (and webhook.endpoint_concurrency_max 1 to 1000, poll_ms 10 \
                 to 60000, endpoints_max 1 to 10000, redeliver_max 1 to 10000000, keep_days 1 \
                 to 3660, retry_after_max_s at most 86400, disable_after_s 1 to 31536000, \
                 rotation_overlap_s at most 2592000)",
            ),
            (
                (1..=31_536_000).contains(&n.pending_after_s)
                    && (10..=3_600_000).contains(&n.interval_ms),
                "notify.pending_after_s",
                "must be 1 to 31536000 (and notify.interval_ms 10 to 3600000)",
            ),
            (
                (1..=31_536_000).contains(&f.rate_age_s_max),
                "fx.rate_age_s_max",
                "must be 1 to 31536000",
            ),
            (
                f.rate_min <= f.rate_max,
                "fx.rate_min",
                "must be at most fx.rate_max",
            ),
            (
                (10..=3_600_000).contains(&f.reload_interval_ms),
                "fx.reload_interval_ms",
                "must be 10 to 3600000",
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

    /// Waits double per try from the minimum to the maximum and stay in their upper half
    /// whatever the jitter.
    #[test]
    fn retry_delays_double_up_to_the_maximum() {
        let settings = PaymentSettings::default();
        let ms = |tries, jitter| settings.retry_delay(tries, jitter).as_millis();
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 40].map(|tries| ms(tries, 1.0)),
            [250, 500, 1000, 2000, 4000, 4000, 4000]
        );
        assert_eq!(ms(1, 0.0), 125);
        assert_eq!(ms(6, 0.0), 2000);
        assert_eq!(ms(3, 0.5), 750);
        assert_eq!(ms(3, 7.0), 1000, "jitter is clamped");
        let short_lease = PaymentSettings {
            lease_ms: 2_000,
            ..PaymentSettings::default()
        };
        assert_eq!(
            short_lease.retry_delay(10, 1.0).as_millis(),
            500,
            "a quarter lease"
        );
    }

    #[test]
    fn example_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/orchestrator.example.toml");
        let example = Settings::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(format!("{example:?}"), format!("{:?}", Settings::default()));
    }

    #[test]
    fn bad_values_name_the_key() {
        let env = |k: &str, v: &str| vec![(format!("{ENV_PREFIX}{k}"), v.to_owned())];
        let error = Settings::load(None, env("VAULT__ENDPOINT", "http://vault")).unwrap_err();
        assert!(error.to_string().contains("vault.endpoint"), "{error}");
        let error = Settings::load(None, env("PAYMENTS__LEASE_MS", "10")).unwrap_err();
        assert!(error.to_string().contains("payments.lease_ms"), "{error}");
        // Rate bounds: a decimal string or, from the environment, a number; a bad one or a
        // minimum above the maximum names its key.
        let settings = Settings::load(None, env("FX__RATE_MIN", "0.5")).unwrap();
        assert_eq!(settings.fx.rate_min.to_string(), "0.5");
        let settings = Settings::load(None, env("FX__RATE_MAX", "5000")).unwrap();
        assert_eq!(settings.fx.rate_max.to_string(), "5000");
        for (key, value, named) in [
            ("FX__RATE_MIN", "abc", "fx.rate_min"),
            ("FX__RATE_MAX", "-3", "fx.rate_max"),
            ("FX__RATE_MIN", "2000000", "fx.rate_min"),
            ("FX__RATE_AGE_S_MAX", "0", "fx.rate_age_s_max"),
            ("FX__RELOAD_INTERVAL_MS", "1", "fx.reload_interval_ms"),
        ] {
            let error = Settings::load(None, env(key, value)).unwrap_err();
            assert!(error.to_string().contains(named), "{key}: {error}");
        }
        let settings = Settings::load(None, env("SERVER__LISTEN_ADDR", "127.0.0.1:7052")).unwrap();
        assert_eq!(settings.server.listen_addr.port(), 7052);
        let error = Settings::load(None, env("LIMITS__WRITE__BURST", "0")).unwrap_err();
        assert!(error.to_string().contains("limits"), "{error}");
        // One key of a class keeps the class's other defaults.
        let settings = Settings::load(None, env("LIMITS__WRITE__REQUESTS_PER_S", "7")).unwrap();
        assert_eq!(settings.limits.write.requests_per_s, 7);
        assert_eq!(
            settings.limits.write.burst,
            Settings::default().limits.write.burst
        );
    }
}
