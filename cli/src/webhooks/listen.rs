//! `tandemctl webhooks listen`: a small HTTP receiver for webhooks on this machine. It checks
//! each delivery's Standard Webhooks signature, answers `204` when it holds and `401` when it
//! does not, and prints one line per event. `tandemctl dev --webhook-listen` and `tandemctl
//! bench webhooks` run the same receiver inside their own process.
//!
//! ```text
//! tandemctl webhooks listen --port 8080 (--secret whsec_... | --secret-file F) \
//!     [--bind 127.0.0.1] [--format table|csv|json]
//! ```
//!
//! A delivery is an HTTP POST (to any path) whose body is `{"type": ..., "timestamp": ...,
//! "data": ...}`, with the headers `webhook-id`, `webhook-timestamp` (unix seconds) and
//! `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! entries, one per secret that signs (two during a rotation). The key is the secret's bytes:
//! the base64 after `whsec_`. A delivery is accepted when any entry matches any secret given
//! (compared in constant time) and its timestamp is within [`TOLERANCE_S`] of this machine's
//! clock.
//!
//! Bounds: [`CONNECTIONS_MAX`] connections at once, bodies up to [`BODY_BYTES_MAX`], and
//! [`READ_TIMEOUT`] to read a request's headers and again its body.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use hmac::Mac as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::print::{Column, Format, Value, print_header, row};

/// How far a delivery's `webhook-timestamp` may be from this machine's clock, either way, in
/// seconds (the Standard Webhooks libraries' default): an older one may be a replay.
pub(crate) const TOLERANCE_S: i64 = 300;

/// Connections served at once; a further one waits in the listen backlog until one closes.
pub(crate) const CONNECTIONS_MAX: usize = 256;

/// The largest body read; a larger one is answered `413`. An event is one gRPC message's worth
/// of JSON at most (4 MiB).
pub(crate) const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long reading a request's headers may take, and then its body.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most `webhook-signature` entries looked at (Tandem sends one, two during a rotation).
const SIGNATURES_MAX: usize = 8;

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Arguments of `tandemctl webhooks listen`.
#[derive(Debug, clap::Args)]
pub(crate) struct ListenArgs {
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long)]
    port: u16,
    /// The address to listen on; anything but loopback lets others reach the receiver.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// The endpoint's signing secret, `whsec_...` (as `webhooks create` or `rotate` printed
    /// it). `--secret-file` keeps it out of the process list.
    #[arg(
        long,
        required_unless_present = "secret_file",
        conflicts_with = "secret_file"
    )]
    secret: Option<String>,
    /// A file holding the secret, or one per line during a rotation (any of them signing is
    /// enough).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// How to print the events.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Runs `tandemctl webhooks listen` until Ctrl-C.
pub(crate) async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let secrets = match (&args.secret, &args.secret_file) {
        (Some(secret), _) => vec![SigningSecret::parse(secret).context("--secret")?],
        (None, Some(path)) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
            let secrets = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(SigningSecret::parse)
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("--secret-file {}", path.display()))?;
            anyhow::ensure!(
                !secrets.is_empty(),
                "--secret-file {} holds no secret",
                path.display()
            );
            secrets
        }
        // clap requires one of the two.
        (None, None) => anyhow::bail!("give --secret or --secret-file"),
    };
    let address = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    eprintln!(
        "listening on http://{} (a valid signature is answered 204, anything else 401); \
         Ctrl-C stops",
        listener.local_addr()?
    );
    let format = args.format;
    print_header(format, COLUMNS);
    serve(listener, secrets, printer(format, ""), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// A sink that prints each accepted event as a row of [`COLUMNS`] in `format` after `prefix`,
/// and each refusal on stderr: what `listen` and `tandemctl dev --webhook-listen` show.
pub(crate) fn printer(format: Format, prefix: &'static str) -> Sink {
    Arc::new(move |outcome| match outcome {
        Outcome::Accepted(event) => {
            println!("{prefix}{}", row(format, COLUMNS, &event_row(&event)));
        }
        Outcome::Refused { id, refusal } => {
            let id = if id.is_empty() { "-" } else { id.as_str() };
            eprintln!("refused a delivery (webhook-id {id}): {refusal}");
        }
    })
}

/// The columns of `listen`: people see when it arrived, the event's id and type, and the
/// summary; machines also get the commit time the payload carries.
const COLUMNS: &[Column] = &[
    Column::text("receive_time", "received", 20),
    Column::text("id", "webhook-id", 30),
    Column::text("type", "type", 34),
    Column::machines("timestamp"),
    Column::text("summary", "summary", 0),
];

fn event_row(event: &Received) -> Vec<Value> {
    let timestamp = |time: OffsetDateTime| prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        // Below one second, so it fits.
        nanos: i32::try_from(time.nanosecond()).unwrap_or_default(),
    };
    vec![
        Value::Time(Some(timestamp(event.receive_time))),
        Value::text(&event.id),
        Value::text(&event.event_type),
        Value::Time(event.commit_time.map(timestamp)),
        Value::text(event.summary.as_deref().unwrap_or_default()),
    ]
}

/// A Standard Webhooks signing secret: the bytes the base64 after `whsec_` encodes.
pub(crate) struct SigningSecret(Zeroizing<Vec<u8>>);

impl SigningSecret {
    /// Reads `whsec_<base64>` (or the base64 alone, as some dashboards show it).
    pub(crate) fn parse(text: &str) -> anyhow::Result<SigningSecret> {
        let encoded = text.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| anyhow::anyhow!("a secret is whsec_ followed by base64"))?,
        );
        anyhow::ensure!(
            (16..=64).contains(&bytes.len()),
            "a secret holds 16 to 64 bytes (Tandem's hold 32)"
        );
        Ok(SigningSecret(bytes))
    }

    /// The HMAC-SHA256 of `{id}.{timestamp}.{body}` under this secret.
    fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        // HMAC takes a key of any length (a long one is hashed first): `new_from_slice`
        // fails only for MACs with a fixed key size.
        let mut mac =
            HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of every length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A header is missing or not text.
    Missing(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    Timestamp,
    /// `webhook-timestamp` is further than [`TOLERANCE_S`] from this machine's clock.
    Stale {
        /// This machine's clock minus the timestamp, in seconds.
        skew_s: i64,
    },
    /// No `v1` signature matches any secret.
    Signature,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing(header) => write!(f, "no {header} header"),
            Refusal::Timestamp => f.write_str("webhook-timestamp is not unix seconds"),
            Refusal::Stale { skew_s } => write!(
                f,
                "webhook-timestamp is {} s {} this machine's clock (at most {TOLERANCE_S} s)",
                skew_s.unsigned_abs(),
                if *skew_s >= 0 { "behind" } else { "ahead of" }
            ),
            Refusal::Signature => f.write_str("no signature matches the secret"),
        }
    }
}

/// Checks a delivery's signature: accepted when `timestamp` is within [`TOLERANCE_S`] of
/// `now_unix_s` and any `v1` entry of `signatures` is the HMAC of `id.timestamp.body` under
/// any of `secrets`. Entries of other versions are skipped; at most [`SIGNATURES_MAX`] are
/// looked at.
pub(crate) fn verify(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_unix_s: i64,
) -> Result<(), Refusal> {
    if id.is_empty() {
        return Err(Refusal::Missing("webhook-id"));
    }
    if timestamp.is_empty() {
        return Err(Refusal::Missing("webhook-timestamp"));
    }
    if signatures.is_empty() {
        return Err(Refusal::Missing("webhook-signature"));
    }
    // Digits only: the signed text must be the header exactly as sent.
    if !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Timestamp);
    }
    let sent: i64 = timestamp.parse().map_err(|_| Refusal::Timestamp)?;
    let skew_s = now_unix_s.saturating_sub(sent);
    if skew_s.abs() > TOLERANCE_S {
        return Err(Refusal::Stale { skew_s });
    }
    let expected: Vec<[u8; 32]> = secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect();
    let matched = signatures
        .split(' ')
        .filter(|entry| !entry.is_empty())
        .take(SIGNATURES_MAX)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        // Every pair is compared, so the time taken does not say which one matched.
        .fold(subtle::Choice::from(0), |matched, given| {
            expected
                .iter()
                .fold(matched, |matched, mac| matched | mac[..].ct_eq(&given))
        });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Refusal::Signature)
    }
}

/// An event a receiver accepted.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// `webhook-id`: the event's id, the same on every retry and redelivery.
    pub(crate) id: String,
    /// When the request was read in full, by this machine's clock.
    pub(crate) receive_time: OffsetDateTime,
    /// The body's `type`; empty if the body is not the expected JSON.
    pub(crate) event_type: String,
    /// The body's `timestamp`: when the event was committed.
    pub(crate) commit_time: Option<OffsetDateTime>,
    /// The body's `data.summary`, if it has one (payment events do).
    pub(crate) summary: Option<String>,
}

/// What a receiver did with one request that reached its signature check.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The signature held; answered `204`.
    Accepted(Received),
    /// Answered `401`.
    Refused {
        /// The `webhook-id` sent, possibly empty.
        id: String,
        /// Why.
        refusal: Refusal,
    },
}

/// Where a receiver reports each outcome; called on the connection's task, so it must be quick.
pub(crate) type Sink = Arc<dyn Fn(Outcome) + Send + Sync>;

/// Serves deliveries on `listener` until `shutdown` completes, checking signatures with
/// `secrets` and reporting each outcome to `sink`. Connections still open at shutdown are
/// closed.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    secrets: Vec<SigningSecret>,
    sink: Sink,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let secrets = Arc::new(secrets);
    let mut connections = tokio::task::JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        // Reap what has ended; at the bound, wait for one to end before accepting more.
        while connections.try_join_next().is_some() {}
        if connections.len() >= CONNECTIONS_MAX {
            tokio::select! {
                _ = connections.join_next() => continue,
                () = &mut shutdown => break,
            }
        }
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // A connection that failed before it was accepted (reset, out of descriptors
                // for a moment): the next one may do.
                Err(error) => {
                    tracing::warn!(%error, "accepting a webhook connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let secrets = secrets.clone();
        let sink = sink.clone();
        let builder = builder.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(request, secrets.clone(), sink.clone())
            });
            // A client that goes away mid-request is its own business.
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
    Ok(())
}

/// Answers one request: `405` for anything but POST, `413` for a body over the bound, `400`
/// for one that could not be read, then `204` or `401` by the signature.
async fn handle(
    request: Request<Incoming>,
    secrets: Arc<Vec<SigningSecret>>,
    sink: Sink,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if request.method() != Method::POST {
        return Ok(answer(StatusCode::METHOD_NOT_ALLOWED));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = Limited::new(request.into_body(), BODY_BYTES_MAX).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE));
        }
        Ok(Err(_)) | Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
    };
    let receive_time = OffsetDateTime::now_utc();
    match verify(
        &secrets,
        &id,
        &timestamp,
        &signatures,
        &body,
        receive_time.unix_timestamp(),
    ) {
        Ok(()) => {
            let (event_type, commit_time, summary) = payload(&body);
            sink(Outcome::Accepted(Received {
                id,
                receive_time,
                event_type,
                commit_time,
                summary,
            }));
            Ok(answer(StatusCode::NO_CONTENT))
        }
        Err(refusal) => {
            sink(Outcome::Refused { id, refusal });
            Ok(answer(StatusCode::UNAUTHORIZED))
        }
    }
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

/// The type, commit time and summary of a delivery's body (`{"type": ..., "timestamp": ...,
/// "data": {"summary": ...}}`); what is missing or malformed is left out.
fn payload(body: &[u8]) -> (String, Option<OffsetDateTime>, Option<String>) {
    use time::format_description::well_known::Rfc3339;
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (String::new(), None, None);
    };
    let text =
        |value: Option<&serde_json::Value>| value.and_then(|v| v.as_str()).map(str::to_owned);
    let event_type = text(json.get("type")).unwrap_or_default();
    let commit_time =
        text(json.get("timestamp")).and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok());
    let summary = text(json.get("data").and_then(|data| data.get("summary")))
        .filter(|summary| !summary.is_empty());
    (event_type, commit_time, summary)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// The Standard Webhooks specification's published test vector.
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// A Tandem-shaped secret: `whsec_` and the base64 of 32 bytes.
    const OTHER_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn secret(text: &str) -> SigningSecret {
        SigningSecret::parse(text).unwrap()
    }

    fn signature(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = secret.sign(id, &timestamp.to_string(), body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac)
        )
    }

    /// One case of [`verification`]: its name, the receiver's secrets, the three headers, the
    /// body, the receiver's clock (unix seconds), and the verdict.
    type Case<'a> = (
        &'a str,
        &'a [SigningSecret],
        &'a str,
        &'a str,
        &'a str,
        &'a [u8],
        i64,
        Result<(), Refusal>,
    );

    /// Every case of the check, table-driven: the specification's vector verifies (so any of
    /// its libraries agrees with this receiver); a wrong secret, an altered body or id, a stale
    /// or future timestamp, a missing header or a signature of another version is refused;
    /// of two signatures (a rotation) one matching is enough, whichever it is.
    #[test]
    fn verification() {
        let vector = [secret(VECTOR_SECRET)];
        let other = [secret(OTHER_SECRET)];
        let both = [secret(OTHER_SECRET), secret(VECTOR_SECRET)];
        let timestamp = VECTOR_TIMESTAMP.to_string();
        let other_signature = signature(&other[0], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        let two = format!("{other_signature} {VECTOR_SIGNATURE}");
        let two_reversed = format!("{VECTOR_SIGNATURE} {other_signature}");
        let now = VECTOR_TIMESTAMP;
        #[rustfmt::skip]
        let cases: &[Case<'_>] = &[
            ("the vector", &vector, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now, Ok(())),
            ("the vector, 299 s later", &vector, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now + 299, Ok(())),
            ("the vector, 300 s early", &vector, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now - 300, Ok(())),
            ("wrong secret", &other, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now, Err(Refusal::Signature)),
            ("altered body", &vector, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, br#"{"test": 2432232315}"#, now, Err(Refusal::Signature)),
            ("altered id", &vector, "msg_other", &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now, Err(Refusal::Signature)),
            ("stale", &vector, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now + 301, Err(Refusal::Stale { skew_s: 301 })),
            ("from the future", &vector, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now - 301, Err(Refusal::Stale { skew_s: -301 })),
            ("two signatures, the second valid", &vector, VECTOR_ID, &timestamp, &two, VECTOR_BODY, now, Ok(())),
            ("two signatures, the first valid", &vector, VECTOR_ID, &timestamp, &two_reversed, VECTOR_BODY, now, Ok(())),
            ("two secrets, one signature", &both, VECTOR_ID, &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now, Ok(())),
            ("two signatures, neither valid", &vector, VECTOR_ID, &timestamp, &format!("{other_signature} {other_signature}"), VECTOR_BODY, now, Err(Refusal::Signature)),
            ("another version", &vector, VECTOR_ID, &timestamp, "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", VECTOR_BODY, now, Err(Refusal::Signature)),
            ("not base64", &vector, VECTOR_ID, &timestamp, "v1,not base64!", VECTOR_BODY, now, Err(Refusal::Signature)),
            ("no id", &vector, "", &timestamp, VECTOR_SIGNATURE, VECTOR_BODY, now, Err(Refusal::Missing("webhook-id"))),
            ("no timestamp", &vector, VECTOR_ID, "", VECTOR_SIGNATURE, VECTOR_BODY, now, Err(Refusal::Missing("webhook-timestamp"))),
            ("no signature", &vector, VECTOR_ID, &timestamp, "", VECTOR_BODY, now, Err(Refusal::Missing("webhook-signature"))),
            ("timestamp not a number", &vector, VECTOR_ID, "16142653e1", VECTOR_SIGNATURE, VECTOR_BODY, now, Err(Refusal::Timestamp)),
            ("signed timestamp", &vector, VECTOR_ID, "+1614265330", VECTOR_SIGNATURE, VECTOR_BODY, now, Err(Refusal::Timestamp)),
        ];
        for (name, secrets, id, timestamp, signatures, body, now, expected) in cases {
            assert_eq!(
                &verify(secrets, id, timestamp, signatures, body, *now),
                expected,
                "{name}"
            );
        }
    }

    /// Secrets are read with or without their prefix; what is not base64 of 16 to 64 bytes is
    /// refused, and `Debug` never shows one.
    #[test]
    fn secrets() {
        assert!(SigningSecret::parse(VECTOR_SECRET).is_ok());
        assert!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(SigningSecret::parse(&format!(" {OTHER_SECRET}\n")).is_ok());
        for bad in ["", "whsec_", "whsec_not base64!", "whsec_c2hvcnQ="] {
            assert!(SigningSecret::parse(bad).is_err(), "{bad:?}");
        }
        let shown = format!("{:?}", secret(OTHER_SECRET));
        assert!(
            !shown.contains("AAEC") && shown.contains("redacted"),
            "{shown}"
        );
    }

    /// The body gives the type, the commit time with its fraction and the summary; a body
    /// without them gives nothing rather than failing.
    #[test]
    fn payloads() {
        let (event_type, commit_time, summary) = payload(
            br#"{"type":"payment.succeeded","timestamp":"2025-01-01T00:00:00.25Z","data":{"summary":"Invoice INV-1 paid"}}"#,
        );
        assert_eq!(event_type, "payment.succeeded");
        assert_eq!(
            commit_time.map(|t| t.unix_timestamp_nanos()),
            Some(1_735_689_600_250_000_000)
        );
        assert_eq!(summary.as_deref(), Some("Invoice INV-1 paid"));
        let (event_type, commit_time, summary) =
            payload(br#"{"type":"card_group.created","timestamp":"x","data":{}}"#);
        assert_eq!(
            (event_type.as_str(), commit_time, summary),
            ("card_group.created", None, None)
        );
        assert_eq!(payload(b"not json"), (String::new(), None, None));
    }

    /// Sends `request` over a new connection and returns the response's status code.
    async fn send(address: SocketAddr, request: &[u8]) -> u16 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn post(id: &str, timestamp: i64, signature: &str, body: &str) -> Vec<u8> {
        format!(
            "POST /webhooks HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nwebhook-id: {id}\r\n\
             webhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Over real TCP on port 0: a signed delivery is answered 204 and reported with its
    /// type, commit time and summary; a forged one 401 and reported as refused; a GET 405.
    #[tokio::test]
    async fn receiver() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let sink: Sink = {
            let outcomes = outcomes.clone();
            Arc::new(move |outcome| outcomes.lock().unwrap().push(outcome))
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            vec![secret(OTHER_SECRET)],
            sink,
            async move {
                let _ = stopped.await;
            },
        ));

        let now = OffsetDateTime::now_utc().unix_timestamp();
        let body = r#"{"type":"payment.succeeded","timestamp":"2025-01-01T00:00:00Z","data":{"summary":"paid"}}"#;
        let valid = signature(&secret(OTHER_SECRET), "evt_1", now, body.as_bytes());
        assert_eq!(send(address, &post("evt_1", now, &valid, body)).await, 204);
        let forged = signature(&secret(VECTOR_SECRET), "evt_2", now, body.as_bytes());
        assert_eq!(send(address, &post("evt_2", now, &forged, body)).await, 401);
        assert_eq!(
            send(
                address,
                b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
            )
            .await,
            405
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();

        let outcomes = outcomes.lock().unwrap();
        assert_eq!(outcomes.len(), 2);
        let Outcome::Accepted(event) = &outcomes[0] else {
            panic!("the signed delivery was not accepted: {:?}", outcomes[0]);
        };
        assert_eq!(
            (
                event.id.as_str(),
                event.event_type.as_str(),
                event.summary.as_deref()
            ),
            ("evt_1", "payment.succeeded", Some("paid"))
        );
        assert_eq!(
            event.commit_time.map(OffsetDateTime::unix_timestamp),
            Some(1_735_689_600)
        );
        assert!(matches!(
            &outcomes[1],
            Outcome::Refused { id, refusal: Refusal::Signature } if id == "evt_2"
        ));
    }
}
