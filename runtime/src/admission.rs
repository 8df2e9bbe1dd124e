//! Admission per caller (DESIGN sections 7 and 12): every call is counted against its caller
//! identity (the client certificate's `<role>/<name>`) and its RPC class, with a token bucket
//! of requests per second and a cap on calls in flight, both from the configuration. A call
//! over either is refused at once with `RESOURCE_EXHAUSTED`, an `ErrorInfo` (reason
//! `RATE_LIMITED` or `TOO_MANY_IN_FLIGHT`, metadata `class`) and a `RetryInfo` saying when to
//! come back; no work waits in a queue. A refusal itself is answered only after the retry delay
//! (up to `refusal_hold_ms_max`; the `RetryInfo` then carries what remains), so that a client
//! that ignores `RetryInfo` and sends again at once is slowed to the pace of its refusals instead
//! of turning them into a flood of their own. Held refusals cost a timer each and are capped per
//! caller (`refusals_held_max`); beyond the cap they are answered at once.
//!
//! A call stays in flight until its response has been sent in full: a stream counts until it
//! ends, so the `stream` class's cap is the number of streams a caller may hold open. A handler
//! that starts work outliving its call (a payment driven in the background) keeps the call's
//! [`InFlight`] ticket, taken from the request's extensions, until that work ends.
//!
//! The layer also puts the caller it identified into the request's extensions, where
//! `tandem_tls::identity::caller_of` finds it without parsing the certificate again. For the
//! dashboard, that caller is the person it calls for ([`ON_BEHALF_OF`]): the dashboard's own
//! role may call nothing, so every role check, limit, four-eyes rule and recorded actor is the
//! person's. Any other caller naming a person is refused.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tandem_tls::identity::{Caller, IdentityError, Role, caller_from_certificate, parse_identity};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::settings::Check;

/// The classes of RPC that are limited apart: a caller's reads never use up its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RpcClass {
    /// Calls that only read, and health and reflection.
    Read,
    /// Calls that change state or reach a processor.
    Write,
    /// Server streams, counted while they are open.
    Stream,
}

impl RpcClass {
    /// Every class.
    pub const ALL: [RpcClass; 3] = [RpcClass::Read, RpcClass::Write, RpcClass::Stream];

    /// The class's name in settings and error metadata.
    pub const fn as_str(self) -> &'static str {
        match self {
            RpcClass::Read => "read",
            RpcClass::Write => "write",
            RpcClass::Stream => "stream",
        }
    }
}

/// The limits of one class for one caller.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassLimits {
    /// Calls admitted per second, on average.
    pub requests_per_s: u32,
    /// Calls admitted at once after a quiet spell (the bucket's size).
    pub burst: u32,
    /// Calls (streams: open streams) in flight at once.
    pub in_flight_max: u32,
}

impl ClassLimits {
    /// Limits of `requests_per_s` with a burst of twice that, and `in_flight_max`.
    pub const fn new(requests_per_s: u32, in_flight_max: u32) -> Self {
        Self {
            requests_per_s,
            burst: requests_per_s.saturating_mul(2),
            in_flight_max,
        }
    }

    /// Limits no test or benchmark reaches, for runs that measure something else.
    pub const UNLIMITED: ClassLimits = ClassLimits {
        requests_per_s: 1_000_000,
        burst: 1_000_000,
        in_flight_max: 1_000_000,
    };

    /// The range checks of these limits under `key`.
    fn holds(&self) -> bool {
        (1..=1_000_000).contains(&self.requests_per_s)
            && (1..=1_000_000).contains(&self.burst)
            && (1..=1_000_000).contains(&self.in_flight_max)
    }
}

/// One caller's own limits, for the classes it names; the others keep the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerLimits {
    /// Its reads.
    pub read: Option<ClassLimits>,
    /// Its writes.
    pub write: Option<ClassLimits>,
    /// Its streams.
    pub stream: Option<ClassLimits>,
}

/// The `[limits]` section: the limits every caller has per class, and callers with their own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Each caller's reads.
    pub read: ClassLimits,
    /// Each caller's writes.
    pub write: ClassLimits,
    /// Each caller's streams.
    pub stream: ClassLimits,
    /// How soon a caller refused for too many calls in flight is told to come back.
    pub in_flight_retry_ms: u64,
    /// Longest a refusal is held before it is answered (0: answered at once).
    pub refusal_hold_ms_max: u64,
    /// Refusals held at once per caller and class; beyond it they are answered at once.
    pub refusals_held_max: u32,
    /// Callers with their own limits, by identity: `[limits.callers."payer/batch".write]`.
    pub callers: BTreeMap<String, CallerLimits>,
}

impl LimitSettings {
    /// The same limits for every caller and class.
    pub fn uniform(limits: ClassLimits) -> Self {
        Self {
            read: limits,
            write: limits,
            stream: limits,
            in_flight_retry_ms: 100,
            refusal_hold_ms_max: 0,
            refusals_held_max: 0,
            callers: BTreeMap::new(),
        }
    }

    /// The limits of `identity`'s calls of `class`.
    pub fn of(&self, identity: &str, class: RpcClass) -> ClassLimits {
        let own = self.callers.get(identity).and_then(|own| match class {
            RpcClass::Read => own.read,
            RpcClass::Write => own.write,
            RpcClass::Stream => own.stream,
        });
        own.unwrap_or(match class {
            RpcClass::Read => self.read,
            RpcClass::Write => self.write,
            RpcClass::Stream => self.stream,
        })
    }

    /// The section as a settings table, for [`crate::settings::load`]'s `base`: a file or an
    /// override that sets one key of a class keeps this service's defaults for the others.
    pub fn base(&self) -> toml::Value {
        let class = |limits: ClassLimits| {
            toml::Value::Table(toml::Table::from_iter([
                (
                    "requests_per_s".to_owned(),
                    toml::Value::Integer(limits.requests_per_s.into()),
                ),
                (
                    "burst".to_owned(),
                    toml::Value::Integer(limits.burst.into()),
                ),
                (
                    "in_flight_max".to_owned(),
                    toml::Value::Integer(limits.in_flight_max.into()),
                ),
            ]))
        };
        let integer = |n: u64| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        toml::Value::Table(toml::Table::from_iter([
            ("read".to_owned(), class(self.read)),
            ("write".to_owned(), class(self.write)),
            ("stream".to_owned(), class(self.stream)),
            (
                "in_flight_retry_ms".to_owned(),
                integer(self.in_flight_retry_ms),
            ),
            (
                "refusal_hold_ms_max".to_owned(),
                integer(self.refusal_hold_ms_max),
            ),
            (
                "refusals_held_max".to_owned(),
                integer(self.refusals_held_max.into()),
            ),
        ]))
    }

    /// The range checks of the section.
    pub fn checks(&self) -> [Check; 5] {
        let classes = [self.read, self.write, self.stream]
            .into_iter()
            .chain(
                self.callers
                    .values()
                    .flat_map(|own| [own.read, own.write, own.stream].into_iter().flatten()),
            )
            .all(|limits| limits.holds());
        [
            (
                classes,
                "limits",
                "every class needs requests_per_s, burst and in_flight_max of 1 to 1000000",
            ),
            (
                (1..=60_000).contains(&self.in_flight_retry_ms),
                "limits.in_flight_retry_ms",
                "must be 1 to 60000",
            ),
            (
                self.refusal_hold_ms_max <= 10_000,
                "limits.refusal_hold_ms_max",
                "must be 0 to 10000",
            ),
            (
                self.refusals_held_max <= 100_000,
                "limits.refusals_held_max",
                "must be 0 to 100000",
            ),
            (
                self.callers.len() <= CALLERS_MAX,
                "limits.callers",
                "may name at most 10000 callers",
            ),
        ]
    }
}

impl Default for LimitSettings {
    /// Generous for one well-behaved service, small beside a flood; each service sets its own.
    fn default() -> Self {
        Self {
            read: ClassLimits::new(500, 128),
            write: ClassLimits::new(200, 64),
            stream: ClassLimits::new(20, 256),
            in_flight_retry_ms: 100,
            refusal_hold_ms_max: 250,
            refusals_held_max: 256,
            callers: BTreeMap::new(),
        }
    }
}

/// Most callers named in `limits.callers`, and most (caller, class) pairs tracked before idle
/// ones are forgotten.
const CALLERS_MAX: usize = 10_000;

/// Maps a gRPC path (`/package.Service/Method`) to its class.
pub type Classifier = fn(&str) -> RpcClass;

/// The admission layer for `tonic::transport::Server::builder().layer(..)`: limits from
/// `settings`, callers identified under `uri_prefix`, classes by `classify`, refusals in
/// `domain` (`vault.tandem`, `orchestrator.tandem`) and counted in the counter family
/// `refusals` (`tandem_orchestrator_admission_refusals_total`) by `class` and `reason`.
pub fn layer(
    settings: LimitSettings,
    uri_prefix: &str,
    classify: Classifier,
    domain: &'static str,
    refusals: &'static str,
) -> AdmissionLayer {
    AdmissionLayer {
        limiter: Arc::new(Limiter {
            settings,
            uri_prefix: uri_prefix.to_owned(),
            classify,
            domain,
            refusals,
            entries: Mutex::new(HashMap::new()),
        }),
    }
}

/// See [`layer`].
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    limiter: Arc<Limiter>,
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// A service behind [`layer`].
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

/// The state of every (caller, class) pair seen lately.
#[derive(Debug)]
struct Limiter {
    settings: LimitSettings,
    uri_prefix: String,
    classify: Classifier,
    domain: &'static str,
    /// The counter family of refusals.
    refusals: &'static str,
    entries: Mutex<HashMap<(String, RpcClass), Entry>>,
}

/// One caller's bucket and calls in flight in one class.
#[derive(Debug)]
struct Entry {
    limits: ClassLimits,
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
    held: u32,
}

impl Entry {
    fn new(limits: ClassLimits, now: Instant) -> Self {
        Self {
            limits,
            tokens: f64::from(limits.burst),
            refilled: now,
            in_flight: 0,
            held: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.limits.requests_per_s))
            .min(f64::from(self.limits.burst));
        self.refilled = now;
    }

    /// Idle: nothing in flight or held and a full bucket, so forgetting it changes nothing.
    fn idle(&self) -> bool {
        self.in_flight == 0 && self.held == 0 && self.tokens >= f64::from(self.limits.burst)
    }
}

/// Why a call was refused, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusal {
    RateLimited(Duration),
    TooManyInFlight(Duration),
}

impl Refusal {
    fn wait(self) -> Duration {
        match self {
            Refusal::RateLimited(wait) | Refusal::TooManyInFlight(wait) => wait,
        }
    }

    /// The `ErrorInfo` reason.
    fn reason(self) -> &'static str {
        match self {
            Refusal::RateLimited(_) => "RATE_LIMITED",
            Refusal::TooManyInFlight(_) => "TOO_MANY_IN_FLIGHT",
        }
    }
}

/// A refusal, and how long it is held (with its place among the caller's held refusals).
#[derive(Debug)]
struct Refused {
    refusal: Refusal,
    hold: Duration,
    held: Option<Ticket>,
}

/// What a [`Ticket`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    InFlight,
    Held,
}

impl Limiter {
    fn entries(&self) -> MutexGuard<'_, HashMap<(String, RpcClass), Entry>> {
        // Counting never panics while holding the lock; a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one call of `identity` in `class` at `now`, or says why not.
    fn admit(
        self: &Arc<Self>,
        identity: &str,
        class: RpcClass,
        now: Instant,
    ) -> Result<InFlight, Refused> {
        let mut entries = self.entries();
        if entries.len() >= CALLERS_MAX {
            entries.retain(|_, entry| {
                entry.refill(now);
                !entry.idle()
            });
        }
        let key = (identity.to_owned(), class);
        let entry = entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(self.settings.of(identity, class), now));
        entry.refill(now);
        let refusal = if entry.in_flight >= entry.limits.in_flight_max {
            Refusal::TooManyInFlight(Duration::from_millis(self.settings.in_flight_retry_ms))
        } else if entry.tokens < 1.0 {
            let wait = (1.0 - entry.tokens) / f64::from(entry.limits.requests_per_s);
            Refusal::RateLimited(Duration::from_secs_f64(wait))
        } else {
            entry.tokens -= 1.0;
            entry.in_flight += 1;
            return Ok(InFlight {
                _ticket: Arc::new(self.ticket(key, Counted::InFlight)),
            });
        };
        let hold = refusal
            .wait()
            .min(Duration::from_millis(self.settings.refusal_hold_ms_max));
        if hold.is_zero() || entry.held >= self.settings.refusals_held_max {
            return Err(Refused {
                refusal,
                hold: Duration::ZERO,
                held: None,
            });
        }
        entry.held += 1;
        Err(Refused {
            refusal,
            hold,
            held: Some(self.ticket(key, Counted::Held)),
        })
    }

    fn ticket(self: &Arc<Self>, key: (String, RpcClass), counted: Counted) -> Ticket {
        Ticket {
            limiter: self.clone(),
            key,
            counted,
        }
    }

    fn release(&self, key: &(String, RpcClass), counted: Counted) {
        if let Some(entry) = self.entries().get_mut(key) {
            let count = match counted {
                Counted::InFlight => &mut entry.in_flight,
                Counted::Held => &mut entry.held,
            };
            *count = count.saturating_sub(1);
        }
    }

    /// The identity calls are counted under: the certificate's caller (or the person a
    /// dashboard calls for, [`ON_BEHALF_OF`]), the raw identity of a certificate whose role is
    /// unknown here (its handler refuses it), or one shared name for a certificate that names
    /// no caller. A delegation the caller may not make is refused (`PERMISSION_DENIED`,
    /// `DELEGATION_REFUSED`).
    fn identify<B>(&self, request: &mut http::Request<B>) -> Result<String, Status> {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        let on_behalf_of = request.headers().get(ON_BEHALF_OF).cloned();
        let Some(leaf) = certs.as_ref().and_then(|certs| certs.first()) else {
            return match on_behalf_of {
                Some(_) => Err(self.delegation_refused()),
                None => Ok(UNIDENTIFIED.to_owned()),
            };
        };
        let caller = match caller_from_certificate(leaf, &self.uri_prefix) {
            Ok(caller) => caller,
            Err(_) if on_behalf_of.is_some() => return Err(self.delegation_refused()),
            Err(IdentityError::UnknownRole { identity, .. }) => return Ok(identity),
            Err(_) => return Ok(UNIDENTIFIED.to_owned()),
        };
        let caller = match on_behalf_of {
            None => caller,
            Some(person) => delegated(&caller, &person).ok_or_else(|| {
                tracing::warn!(%caller, "delegation refused");
                self.delegation_refused()
            })?,
        };
        let identity = caller.to_string();
        request.extensions_mut().insert(caller);
        Ok(identity)
    }

    fn delegation_refused(&self) -> Status {
        Status::with_error_details(
            Code::PermissionDenied,
            "only the dashboard calls on behalf of a person, and only for a person's role",
            ErrorDetails::with_error_info("DELEGATION_REFUSED", self.domain, HashMap::new()),
        )
    }

    /// The status of `refusal`, answered after `held` of its wait.
    fn refusal_status(&self, refusal: Refusal, held: Duration, class: RpcClass) -> Status {
        let reason = refusal.reason();
        let message = match refusal {
            Refusal::RateLimited(_) => {
                "this caller's calls of this class are over its rate; retry after the delay"
            }
            Refusal::TooManyInFlight(_) => {
                "this caller has as many calls of this class in flight as it may; retry after \
                 the delay"
            }
        };
        let wait = refusal.wait().saturating_sub(held);
        let mut details = ErrorDetails::with_error_info(
            reason,
            self.domain,
            HashMap::from([("class".to_owned(), class.as_str().to_owned())]),
        );
        // At least a millisecond: a zero delay reads as "retry at once".
        details.set_retry_info(Some(wait.max(Duration::from_millis(1))));
        Status::with_error_details(Code::ResourceExhausted, message, details)
    }
}

/// The name calls without a caller identity are counted under.
const UNIDENTIFIED: &str = "(unidentified)";

/// The header in which the dashboard names the person it calls for (`<role>/<name>`, as in a
/// certificate): the person whose client certificate the dashboard verified.
pub const ON_BEHALF_OF: &str = "x-tandem-on-behalf-of";

/// The person `caller` calls for as `person` (an [`ON_BEHALF_OF`] value), when `caller` is a
/// dashboard and `person` a well-formed identity of a person's role.
fn delegated(caller: &Caller, person: &http::HeaderValue) -> Option<Caller> {
    if caller.role != Role::Dashboard {
        return None;
    }
    let person = parse_identity(person.to_str().ok()?).ok()?;
    Role::PEOPLE.contains(&person.role).then_some(person)
}

/// A call's place among its caller's calls in flight: the call counts until the last clone is
/// dropped. The admission layer puts one in the request's extensions.
#[derive(Debug, Clone)]
pub struct InFlight {
    _ticket: Arc<Ticket>,
}

/// One count of a (caller, class) pair, given back on drop.
#[derive(Debug)]
struct Ticket {
    limiter: Arc<Limiter>,
    key: (String, RpcClass),
    counted: Counted,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.limiter.release(&self.key, self.counted);
    }
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for Admission<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = http::Response<Admitted<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let class = (self.limiter.classify)(request.uri().path());
        let identity = match self.limiter.identify(&mut request) {
            Ok(identity) => identity,
            Err(status) => {
                let response = status.into_http::<ResponseBody>().map(|body| Admitted {
                    inner: body,
                    _ticket: None,
                });
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        match self.limiter.admit(&identity, class, Instant::now()) {
            Ok(ticket) => {
                request.extensions_mut().insert(ticket.clone());
                let response = self.inner.call(request);
                Box::pin(async move {
                    let response = response.await?;
                    Ok(response.map(|body| Admitted {
                        inner: body,
                        _ticket: Some(ticket),
                    }))
                })
            }
            Err(Refused {
                refusal,
                hold,
                held,
            }) => {
                // A flood is refused thousands of times a second: not a line each at info.
                tracing::debug!(
                    caller = identity,
                    class = class.as_str(),
                    method = request.uri().path(),
                    ?refusal,
                    ?hold,
                    "call refused by admission"
                );
                metrics::counter!(
                    self.limiter.refusals,
                    "class" => class.as_str(),
                    "reason" => refusal.reason()
                )
                .increment(1);
                let status = self.limiter.refusal_status(refusal, hold, class);
                let response = status.into_http::<ResponseBody>().map(|body| Admitted {
                    inner: body,
                    _ticket: None,
                });
                match held {
                    None => Box::pin(std::future::ready(Ok(response))),
                    Some(held) => Box::pin(async move {
                        tokio::time::sleep(hold).await;
                        drop(held);
                        Ok(response)
                    }),
                }
            }
        }
    }
}

/// A response body that keeps its call in flight until the body is done with.
#[derive(Debug)]
pub struct Admitted<B> {
    inner: B,
    _ticket: Option<InFlight>,
}

impl<B> http_body::Body for Admitted<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(settings: LimitSettings) -> Arc<Limiter> {
        layer(
            settings,
            "spiffe://tandem.local/",
            |_| RpcClass::Write,
            "test.tandem",
            "tandem_test_admission_refusals_total",
        )
        .limiter
    }

    /// A burst is admitted, the next call waits for the bucket to refill at the rate, and the
    /// refusal says how long.
    #[test]
    fn token_bucket() {
        let limiter = limiter(LimitSettings::uniform(ClassLimits {
            requests_per_s: 10,
            burst: 3,
            in_flight_max: 100,
        }));
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(limiter.admit("payer/a", RpcClass::Write, start).unwrap());
        }
        let Err(Refused {
            refusal: Refusal::RateLimited(wait),
            ..
        }) = limiter.admit("payer/a", RpcClass::Write, start)
        else {
            panic!("the fourth call of a burst of three is refused");
        };
        assert!((Duration::from_millis(99)..=Duration::from_millis(100)).contains(&wait));
        // Another caller, and another class, have their own buckets.
        assert!(limiter.admit("payer/b", RpcClass::Write, start).is_ok());
        assert!(limiter.admit("payer/a", RpcClass::Read, start).is_ok());
        let later = start + Duration::from_millis(100);
        assert!(limiter.admit("payer/a", RpcClass::Write, later).is_ok());
        assert!(limiter.admit("payer/a", RpcClass::Write, later).is_err());
    }

    /// The in-flight cap counts tickets until the last clone is gone.
    #[test]
    fn in_flight_cap() {
        let limiter = limiter(LimitSettings::uniform(ClassLimits {
            requests_per_s: 1000,
            burst: 1000,
            in_flight_max: 2,
        }));
        let now = Instant::now();
        let first = limiter.admit("payer/a", RpcClass::Write, now).unwrap();
        let second = limiter.admit("payer/a", RpcClass::Write, now).unwrap();
        assert_eq!(
            limiter
                .admit("payer/a", RpcClass::Write, now)
                .unwrap_err()
                .refusal,
            Refusal::TooManyInFlight(Duration::from_millis(100))
        );
        let kept = second.clone();
        drop(second);
        assert!(limiter.admit("payer/a", RpcClass::Write, now).is_err());
        drop(kept);
        let third = limiter.admit("payer/a", RpcClass::Write, now).unwrap();
        drop((first, third));
    }

    /// Only a dashboard calls for someone, and only for a person's role named in full.
    #[test]
    fn delegations() {
        let caller = |text: &str| parse_identity(text).expect("identity");
        let value = |text: &str| http::HeaderValue::from_str(text).expect("header value");
        let dashboard = caller("dashboard/web-1");
        assert_eq!(
            delegated(&dashboard, &value("reviewer/alice")),
            Some(caller("reviewer/alice"))
        );
        assert_eq!(
            delegated(&dashboard, &value("approver/bob")),
            Some(caller("approver/bob"))
        );
        for refused in [
            "orchestrator/x",
            "tokenizer/x",
            "dashboard/web-2",
            "service/x",
            "system/x",
            "root/x",
            "reviewer",
            "reviewer/",
            "Reviewer/alice",
        ] {
            assert_eq!(delegated(&dashboard, &value(refused)), None, "{refused}");
        }
        for role in ["treasury/t", "reviewer/r", "admin/a", "orchestrator/o"] {
            assert_eq!(
                delegated(&caller(role), &value("reader/alice")),
                None,
                "{role}"
            );
        }
    }

    /// A caller's own limits replace the defaults for the classes it names only.
    #[test]
    fn callers_own_limits() {
        let mut settings = LimitSettings::default();
        let own = ClassLimits::new(5, 1);
        settings.callers.insert(
            "payer/batch".to_owned(),
            CallerLimits {
                write: Some(own),
                ..CallerLimits::default()
            },
        );
        assert_eq!(settings.of("payer/batch", RpcClass::Write), own);
        assert_eq!(settings.of("payer/batch", RpcClass::Read), settings.read);
        assert_eq!(settings.of("payer/other", RpcClass::Write), settings.write);
        assert!(settings.checks().iter().all(|(ok, _, _)| *ok));
        settings.callers.get_mut("payer/batch").unwrap().read = Some(ClassLimits::new(0, 1));
        assert!(!settings.checks()[0].0);
    }

    /// Refusals are RESOURCE_EXHAUSTED with the reason, the class and the retry delay left
    /// after the refusal was held.
    #[test]
    fn refusal_status() {
        let limiter = limiter(LimitSettings::default());
        let status = limiter.refusal_status(
            Refusal::RateLimited(Duration::from_millis(400)),
            Duration::from_millis(150),
            RpcClass::Write,
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "RATE_LIMITED");
        assert_eq!(info.domain, "test.tandem");
        assert_eq!(
            info.metadata.get("class").map(String::as_str),
            Some("write")
        );
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
    }

    /// Idle pairs are forgotten once the map is full; busy ones are kept.
    #[test]
    fn idle_entries_are_forgotten() {
        let limiter = limiter(LimitSettings::uniform(ClassLimits::new(1000, 10)));
        let now = Instant::now();
        let busy = limiter.admit("payer/busy", RpcClass::Write, now).unwrap();
        for n in 0..CALLERS_MAX {
            drop(limiter.admit(&format!("payer/p{n}"), RpcClass::Read, now));
        }
        let later = now + Duration::from_secs(10);
        limiter.admit("payer/new", RpcClass::Read, later).unwrap();
        let entries = limiter.entries();
        assert!(entries.len() < 10);
        assert_eq!(
            entries[&("payer/busy".to_owned(), RpcClass::Write)].in_flight,
            1
        );
        drop(entries);
        drop(busy);
    }

    /// A refusal is held for its wait, up to the maximum, while the caller has fewer than
    /// `refusals_held_max` held; the others are answered at once.
    #[test]
    fn refusals_are_held_up_to_the_cap() {
        let mut settings = LimitSettings::uniform(ClassLimits {
            requests_per_s: 1,
            burst: 1,
            in_flight_max: 100,
        });
        settings.refusal_hold_ms_max = 250;
        settings.refusals_held_max = 2;
        let limiter = limiter(settings);
        let now = Instant::now();
        let _admitted = limiter.admit("payer/a", RpcClass::Write, now).unwrap();
        let first = limiter.admit("payer/a", RpcClass::Write, now).unwrap_err();
        assert_eq!(first.hold, Duration::from_millis(250));
        let second = limiter.admit("payer/a", RpcClass::Write, now).unwrap_err();
        assert!(second.held.is_some());
        let third = limiter.admit("payer/a", RpcClass::Write, now).unwrap_err();
        assert_eq!((third.hold, third.held.is_some()), (Duration::ZERO, false));
        drop(first);
        let fourth = limiter.admit("payer/a", RpcClass::Write, now).unwrap_err();
        assert!(fourth.held.is_some(), "a held slot is given back on drop");
        drop((second, fourth));
    }
}
