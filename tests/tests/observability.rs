//! Observability (DESIGN section 14) from the outside: a real Prometheus (Debian's package,
//! which `scripts/test.sh` installs) scrapes both services during a short payment run, and its
//! HTTP API shows the payment counters equal to the payments made, per state and card group;
//! the vault's families come from its own endpoint, the orchestrator's from its own, none
//! twice. The alert rules pass `promtool check rules`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1::DeclineCode;
use tandem_tests::stack::{Stack, group, member, policy, state};
use tandem_tests::{
    RunningOrchestrator, RunningVault, TestDatabase, free_local_addr, orchestrator_settings,
    vault_settings,
};

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";

/// A Prometheus server scraping `targets` (job name, address) every second, on a fresh
/// storage directory; killed when dropped.
struct Prometheus {
    addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("tandem-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("prometheus directory");
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let addr = free_local_addr();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"))
            .spawn()
            .expect(
                "start prometheus (Debian's `prometheus` package: scripts/test.sh installs it)",
            );
        Prometheus { addr, dir, child }
    }

    /// The instant vector of `query`, as (labels, value) pairs; empty until Prometheus answers.
    async fn query(&self, query: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let Some(body) = http_get(self.addr, &path).await else {
            return Vec::new();
        };
        let answer: serde_json::Value = serde_json::from_str(&body).expect("query answer");
        let results = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        results
            .into_iter()
            .map(|sample| {
                let labels = sample["metric"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// Polls `query` until `expected` (label value of `by` to value) is what it answers.
    async fn wait_for(&self, query: &str, by: &str, expected: &BTreeMap<String, f64>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let found: BTreeMap<String, f64> = self
                .query(query)
                .await
                .into_iter()
                .map(|(labels, value)| (labels.get(by).cloned().unwrap_or_default(), value))
                .collect();
            if &found == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{query}: {found:?}, expected {expected:?}\n{}",
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of a `GET path` answered 200 by the HTTP server at `addr`; `None` otherwise.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Prometheus answers small queries in one piece; a chunked answer is unwrapped here.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            out.push_str(tail.get(..size)?);
            rest = tail.get(size + 2..)?;
        }
        return Some(out);
    }
    Some(body.to_owned())
}

/// Nine payments (six paid, three declined), scraped by Prometheus from both services: the
/// orchestrator's counters say how many payments entered each state, by card group, and each
/// family is scraped from its own service only.
#[tokio::test]
async fn prometheus_counts_the_payments_by_state() {
    let vault_database = TestDatabase::create().await;
    let mut settings = vault_settings(&vault_database);
    settings.metrics.listen_addr = free_local_addr();
    let vault_metrics = settings.metrics.listen_addr;
    let vault = RunningVault::start_with(settings, vault_database).await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    settings.metrics.listen_addr = free_local_addr();
    let orchestrator_metrics = settings.metrics.listen_addr;
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let prometheus = Prometheus::start(&[
        ("vault", vault_metrics),
        ("orchestrator", orchestrator_metrics),
    ]);

    let good = stack.vault.tokenize(VISA).await;
    let bad = stack.vault.tokenize(MASTERCARD).await;
    stack
        .sandbox_decline(&bad, DeclineCode::InsufficientFunds)
        .await;
    let sequential = || policy(S::Sequential, &[], C::AllOrNothing);
    let paying = stack
        .create_group(group(
            vec![member(&good, "good", 1, None, None)],
            sequential(),
        ))
        .await;
    let declining = stack
        .create_group(group(
            vec![member(&bad, "bad", 1, None, None)],
            sequential(),
        ))
        .await;
    let mut made: BTreeMap<String, f64> = BTreeMap::new();
    for (n, group) in std::iter::repeat_n(&paying.id, 6)
        .chain(std::iter::repeat_n(&declining.id, 3))
        .enumerate()
    {
        let payment = stack.pay(group, &format!("INV-OBS-{n}"), 1_000, None).await;
        *made.entry(state(&payment).to_owned()).or_default() += 1.0;
    }
    assert_eq!(made.get("SUCCEEDED"), Some(&6.0), "{made:?}");
    assert_eq!(made.get("FAILED"), Some(&3.0), "{made:?}");

    // Every payment entered PENDING and AUTHORIZING, the paid ones CAPTURING too, and each
    // ended in the state it was answered with.
    let mut expected = made.clone();
    expected.insert("PENDING".into(), 9.0);
    expected.insert("AUTHORIZING".into(), 9.0);
    expected.insert("CAPTURING".into(), 6.0);
    prometheus
        .wait_for(
            "sum by (state) (tandem_orchestrator_payments_total)",
            "state",
            &expected,
        )
        .await;
    prometheus
        .wait_for(
            "sum by (card_group) (tandem_orchestrator_payments_total{state=~\"SUCCEEDED|FAILED\"})",
            "card_group",
            &BTreeMap::from([(paying.id.clone(), 6.0), (declining.id.clone(), 3.0)]),
        )
        .await;
    prometheus
        .wait_for(
            "sum by (code) (tandem_orchestrator_declines_total)",
            "code",
            &BTreeMap::from([("INSUFFICIENT_FUNDS".to_owned(), 3.0)]),
        )
        .await;
    prometheus
        .wait_for(
            "sum by (state) (tandem_orchestrator_payment_duration_seconds_count)",
            "state",
            &BTreeMap::from([("SUCCEEDED".to_owned(), 6.0), ("FAILED".to_owned(), 3.0)]),
        )
        .await;
    // Each service's families come from its own endpoint, so nothing is counted twice.
    for job in ["vault", "orchestrator"] {
        assert!(count_of(&prometheus, job).await > 0.0);
    }
    for (job, foreign) in [
        ("vault", "tandem_orchestrator_"),
        ("orchestrator", "tandem_vault_"),
    ] {
        let leaked = prometheus
            .query(&format!("{{job=\"{job}\",__name__=~\"{foreign}.*\"}}"))
            .await;
        assert!(leaked.is_empty(), "{job} serves {foreign}*: {leaked:?}");
    }
    let authorized = prometheus
        .query("sum(tandem_vault_operations_total{rpc=~\".*Authorize\",outcome=\"OK\"})")
        .await;
    assert!(
        authorized.first().is_some_and(|(_, value)| *value >= 9.0),
        "{authorized:?}"
    );
}

/// How many Tandem series the scrapes of `job` hold, once there is one.
async fn count_of(prometheus: &Prometheus, job: &str) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = prometheus
            .query(&format!("count({{job=\"{job}\",__name__=~\"tandem_.*\"}})"))
            .await;
        if let Some((_, count)) = found.first()
            && *count > 0.0
        {
            return *count;
        }
        assert!(tokio::time::Instant::now() < deadline, "no series of {job}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The alert rules shipped for Prometheus are valid.
#[test]
fn alert_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus/alerts.yml");
    let output = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("run promtool (Debian's `prometheus` package: scripts/test.sh installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every log line of a payment's work carries the caller's correlation id: the lines of its
/// drive (which name the payment) and those of the vault's charge calls it made, in both
/// services.
#[tokio::test]
async fn every_line_of_a_payment_carries_its_correlation_id() {
    let logs = tandem_tests::LogCapture::install();
    let stack = Stack::start().await;
    let card = stack.vault.tokenize(VISA).await;
    let group = stack
        .create_group(group(
            vec![member(&card, "card", 1, None, None)],
            policy(S::Sequential, &[], C::AllOrNothing),
        ))
        .await;
    let mut request = tonic::Request::new(tandem_tests::stack::payment_request(
        &group.id, "INV-LOG", 700, None,
    ));
    request
        .metadata_mut()
        .insert("x-request-id", "obs-corr-7".parse().expect("metadata"));
    let payment = stack
        .payments()
        .await
        .create_payment(request)
        .await
        .expect("create payment")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(state(&payment), "SUCCEEDED");
    let text = logs.text();
    let of_payment: Vec<&str> = text.lines().filter(|l| l.contains(&payment.id)).collect();
    let of_charges: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("/tandem.vault.v1.ChargeService/"))
        .collect();
    assert!(
        of_payment.len() > 5,
        "{} lines name the payment",
        of_payment.len()
    );
    assert!(
        of_charges.len() > 5,
        "{} lines of charge calls",
        of_charges.len()
    );
    for line in of_payment.iter().chain(&of_charges) {
        assert!(
            line.contains("obs-corr-7"),
            "without the correlation id: {line}"
        );
    }
}

/// The Grafana dashboard and the alert rules query only families the services export (a
/// renamed metric breaks this, not a dashboard in production).
#[test]
fn the_dashboard_and_the_alerts_name_exported_families() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exported: std::collections::BTreeSet<&str> = tandem_orchestrator::metrics::ALL
        .iter()
        .chain(tandem_vault::metrics::ALL.iter())
        .copied()
        .collect();
    for file in ["ops/grafana/tandem.json", "ops/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("ops file");
        let mut named = 0;
        for (start, _) in text.match_indices("tandem_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !(name.starts_with("tandem_vault_") || name.starts_with("tandem_orchestrator_")) {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|family| exported.contains(family))
                })
                .unwrap_or(&name);
            assert!(
                exported.contains(family),
                "{file} queries {name}, which nothing exports"
            );
            named += 1;
        }
        assert!(named >= 9, "{file} names {named} families");
    }
}
