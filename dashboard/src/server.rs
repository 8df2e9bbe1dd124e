//! HTTPS with client certificates: the accept loop of `tandem_tls` (a browser without a
//! certificate from the Tandem CA is dropped at the handshake), HTTP/1.1 on hyper, the person
//! read from the certificate once per connection, and the routes: pages (GET), the script,
//! a payment's live events, and forms (POST, checked by [`crate::forms`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tandem_tls::identity::{Caller, Role, caller_from_certificate};
use tokio::net::TcpListener;

use crate::api::{Api, ApiError};
use crate::config::Settings;
use crate::forms::{self, BODY_BYTES_MAX, FormKey, Posted, Visit, fingerprint};
use crate::html::{SCRIPT_PATH, escape, page};
use crate::{live, pages};

/// Why the dashboard could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] tandem_tls::TlsError),
    /// A client of the services could not be set up.
    #[error("client: {0}")]
    Client(#[from] tandem_tls::client::ConnectError),
    /// The system's random source failed (the key of form tokens is made from it).
    #[error("no random source for the form key")]
    Random,
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let tls = tandem_tls::server::web_server_config(&settings.tls.files())?;
    let shared = Arc::new(Shared {
        api: Api::new(&settings)?,
        forms: FormKey::generate().map_err(|_| RunError::Random)?,
    });
    let limits = tandem_tls::server::AcceptLimits {
        handshake_timeout: Duration::from_millis(settings.server.handshake_timeout_ms),
        handshakes_max: 64,
        connections_max: settings.server.connections_max,
    };
    tracing::info!(address = ?listener.local_addr().ok(), "dashboard serving");
    let mut incoming = tandem_tls::server::incoming(listener, tls, limits);
    let prefix: Arc<str> = settings.tls.identity_uri_prefix.clone().into();
    tokio::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            connection = incoming.next() => connection,
            () = &mut shutdown => return Ok(()),
        };
        let connection = match connection {
            Some(Ok(connection)) => connection,
            Some(Err(_)) => continue,
            // The accept loop ended: nothing more will come.
            None => return Ok(()),
        };
        let leaf = connection
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| leaf.as_ref().to_vec());
        let person = leaf.as_ref().and_then(|leaf| {
            caller_from_certificate(&leaf.as_slice().into(), &prefix)
                .ok()
                .map(|caller| (caller, fingerprint(leaf)))
        });
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (shared, person) = (shared.clone(), person.clone());
                async move {
                    let started = Instant::now();
                    let mut response = match &person {
                        Some((caller, print)) => {
                            let visit = Visit::new(caller, print, &shared.forms);
                            respond(&shared.api, visit, request).await
                        }
                        None => not_a_person(),
                    };
                    // The time the answer took here (to its headers, for a stream), for the
                    // browser's developer tools and the benchmark.
                    let timing =
                        format!("total;dur={:.1}", started.elapsed().as_secs_f64() * 1000.0);
                    if let Ok(value) = http::HeaderValue::from_str(&timing) {
                        response.headers_mut().insert("server-timing", value);
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            // A request's head must arrive in time, also the next one on a kept-alive
            // connection: a client holding a connection idle gives its place up.
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(connection), service)
                .await
            {
                tracing::debug!(%error, "dashboard connection ended");
            }
        });
    }
}

/// How long a request's head may take to arrive, and a kept-alive connection may wait for the
/// next one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection shares: the services' clients and the key of form tokens.
struct Shared {
    api: Api,
    forms: FormKey,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Response = http::Response<Body>;

/// The bundle of `dashboard/web/` (charts, filters without a reload, live updates), built by
/// its npm build and committed, so neither this build nor the running dashboard needs npm.
const SCRIPT: &[u8] = include_bytes!("../web/dist/dashboard.js");

/// The answer to a certificate that names no person's role.
fn not_a_person() -> Response {
    plain(
        http::StatusCode::FORBIDDEN,
        "This certificate is not a person's: the dashboard serves people's roles only.",
    )
}

/// The answer to one request of `visit`'s person.
async fn respond(
    api: &Api,
    visit: Visit<'_>,
    request: http::Request<hyper::body::Incoming>,
) -> Response {
    if !Role::PEOPLE.contains(&visit.person.role) {
        return not_a_person();
    }
    let answer = match *request.method() {
        http::Method::GET => get(api, &visit, &request).await,
        http::Method::POST => post(api, &visit, request).await,
        _ => Ok(Answer::Plain(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "Only GET and POST are served here.",
        )),
    };
    match answer {
        Ok(Answer::Html(html)) => html_response(http::StatusCode::OK, html),
        Ok(Answer::Redirect(location)) => redirect(&location),
        Ok(Answer::Script) => secured(http::Response::builder())
            .header("content-type", "text/javascript; charset=utf-8")
            .body(full(Bytes::from_static(SCRIPT)))
            .unwrap_or_default(),
        Ok(Answer::Events(body)) => secured(http::Response::builder())
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap_or_default(),
        Ok(Answer::Plain(status, text)) => plain(status, text),
        Err(error) => error_page(visit.person, &error),
    }
}

/// What a request is answered with.
enum Answer {
    Html(String),
    Redirect(String),
    Script,
    Events(Body),
    Plain(http::StatusCode, &'static str),
}

async fn get<B>(
    api: &Api,
    visit: &Visit<'_>,
    request: &http::Request<B>,
) -> Result<Answer, ApiError> {
    let path = request.uri().path();
    let query = request.uri().query();
    let html = match path {
        "/" => return Ok(Answer::Redirect("/payments".to_owned())),
        // Browsers ask for it on a first visit; there is none.
        "/favicon.ico" => {
            return Ok(Answer::Plain(http::StatusCode::NO_CONTENT, ""));
        }
        SCRIPT_PATH => return Ok(Answer::Script),
        "/payments" => pages::payments::payments(api, visit, query).await,
        "/card-groups" => pages::card_groups::card_groups(api, visit, query).await,
        "/spend" => pages::spend::spend(api, visit, query).await,
        "/failures" => pages::failures::failures(api, visit, query).await,
        "/reconciliation" => pages::reconciliation::reconciliation(api, visit, query).await,
        "/review" => pages::review::queue(api, visit, query).await,
        "/webhooks" => pages::webhooks::endpoints(api, visit, query).await,
        "/keys" => pages::keys::keys(api, visit).await,
        _ => {
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match segments.as_slice() {
                ["payments", id] if !id.is_empty() => {
                    pages::payments::payment(api, visit, id).await
                }
                ["payments", id, "events"] if !id.is_empty() => {
                    let after = live::resume_after(request.headers(), query);
                    let stream = live::payment_events(
                        api.clone(),
                        visit.person.clone(),
                        (*id).to_owned(),
                        after,
                    )
                    .await?;
                    let body = StreamBody::new(stream.map(|bytes| bytes.map(Frame::data)));
                    return Ok(Answer::Events(BodyExt::boxed_unsync(body)));
                }
                ["card-groups", id] if !id.is_empty() => {
                    pages::card_groups::card_group(api, visit, id).await
                }
                ["webhooks", id] if !id.is_empty() => {
                    pages::webhooks::endpoint(api, visit, id, query).await
                }
                _ => Err(ApiError::NotFound),
            }
        }
    };
    html.map(Answer::Html)
}

/// A form's post: from the dashboard's own origin, within [`BODY_BYTES_MAX`], with this
/// person's token for this path; then the change, and a redirect to the page to see it on.
async fn post(
    api: &Api,
    visit: &Visit<'_>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<Answer, ApiError> {
    if let Err(refused) = forms::same_origin(request.headers()) {
        return Err(ApiError::Forbidden(refused.to_string()));
    }
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(Answer::Plain(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large.",
            ));
        }
    };
    let posted = Posted::parse(&body);
    if let Err(refused) = forms::check_token(visit, &path, &posted) {
        return Err(ApiError::Forbidden(refused.to_string()));
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let location = match segments.as_slice() {
        ["reconciliation", "discrepancies", id, "propose"] => {
            pages::reconciliation::propose(api, visit, id, &posted).await?
        }
        ["reconciliation", "adjustments", id, "approve"] => {
            pages::reconciliation::decide(api, visit, id, true, &posted).await?
        }
        ["reconciliation", "adjustments", id, "reject"] => {
            pages::reconciliation::decide(api, visit, id, false, &posted).await?
        }
        ["review", id] => pages::review::decide(api, visit, id, &posted).await?,
        _ => return Err(ApiError::NotFound),
    };
    Ok(Answer::Redirect(location))
}

/// An error as a page, with the status it stands for.
fn error_page(person: &Caller, error: &ApiError) -> Response {
    let status = match error {
        ApiError::Forbidden(_) => http::StatusCode::FORBIDDEN,
        ApiError::NotFound => http::StatusCode::NOT_FOUND,
        ApiError::Invalid(_) => http::StatusCode::BAD_REQUEST,
        ApiError::Conflict(_) => http::StatusCode::CONFLICT,
        ApiError::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = format!("<p role=\"alert\">{}</p>", escape(&error.to_string()));
    html_response(
        status,
        page(status.canonical_reason().unwrap_or("Error"), person, &body),
    )
}

/// Headers every answer carries: no caching of what a person saw, no framing, no sniffing, and
/// scripts and styles from this origin only.
fn secured(mut builder: http::response::Builder) -> http::response::Builder {
    let headers = [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: under it a browser posts a form with `Origin: null`, which
        // the origin check refuses. Other sites still get no referrer.
        ("referrer-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; \
             form-action 'self'",
        ),
    ];
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder
}

fn full(bytes: Bytes) -> Body {
    BodyExt::boxed_unsync(Full::new(bytes))
}

fn html_response(status: http::StatusCode, html: String) -> Response {
    secured(http::Response::builder().status(status))
        .header("content-type", "text/html; charset=utf-8")
        .body(full(Bytes::from(html)))
        .unwrap_or_default()
}

fn plain(status: http::StatusCode, text: &'static str) -> Response {
    secured(http::Response::builder().status(status))
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(Bytes::from_static(text.as_bytes())))
        .unwrap_or_default()
}

fn redirect(location: &str) -> Response {
    secured(http::Response::builder().status(http::StatusCode::SEE_OTHER))
        .header("location", location)
        .body(full(Bytes::new()))
        .unwrap_or_default()
}
