//! HTTPS with client certificates: the accept loop of `tandem_tls` (a browser without a
//! certificate from the Tandem CA is dropped at the handshake), HTTP/1.1 on hyper, the person
//! read from the certificate once per connection, and the routes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tandem_tls::identity::{Caller, Role, caller_from_certificate};
use tokio::net::TcpListener;

use crate::api::{Api, ApiError};
use crate::config::Settings;
use crate::html::page;
use crate::pages;

/// Why the dashboard could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] tandem_tls::TlsError),
    /// A client of the services could not be set up.
    #[error("client: {0}")]
    Client(#[from] tandem_tls::client::ConnectError),
}

/// Serves the dashboard on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let tls = tandem_tls::server::web_server_config(&settings.tls.files())?;
    let api = Arc::new(Api::new(&settings)?);
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
        let person = connection
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|leaf| caller_from_certificate(leaf, &prefix).ok());
        let api = api.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (api, person) = (api.clone(), person.clone());
                async move { Ok::<_, Infallible>(respond(&api, person.as_ref(), request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(connection), service)
                .await
            {
                tracing::debug!(%error, "dashboard connection ended");
            }
        });
    }
}

type Response = http::Response<Full<Bytes>>;

/// The answer to one request from `person` (the certificate's caller, if it names one).
async fn respond<B>(api: &Api, person: Option<&Caller>, request: http::Request<B>) -> Response {
    let Some(person) = person.filter(|p| Role::PEOPLE.contains(&p.role)) else {
        return plain(
            http::StatusCode::FORBIDDEN,
            "This certificate is not a person's: the dashboard serves people's roles only.",
        );
    };
    if request.method() != http::Method::GET {
        return plain(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "Only GET is served here.",
        );
    }
    let path = request.uri().path();
    let query = request.uri().query();
    let answer = match path {
        "/" => return redirect("/payments"),
        "/payments" => pages::payments(api, person, query).await,
        "/card-groups" => pages::card_groups(api, person, query).await,
        _ => {
            if let Some(id) = one_segment(path, "/payments/") {
                pages::payment(api, person, id).await
            } else if let Some(id) = one_segment(path, "/card-groups/") {
                pages::card_group(api, person, id).await
            } else {
                Err(ApiError::NotFound)
            }
        }
    };
    match answer {
        Ok(html) => html_response(http::StatusCode::OK, html),
        Err(error) => {
            let status = match error {
                ApiError::Forbidden => http::StatusCode::FORBIDDEN,
                ApiError::NotFound => http::StatusCode::NOT_FOUND,
                ApiError::Invalid(_) => http::StatusCode::BAD_REQUEST,
                ApiError::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = format!(
                "<p role=\"alert\">{}</p>",
                crate::html::escape(&error.to_string())
            );
            html_response(
                status,
                page(status.canonical_reason().unwrap_or("Error"), person, &body),
            )
        }
    }
}

/// The one path segment after `prefix` (an id), if `path` is that.
fn one_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Headers every answer carries: no caching of what a person saw, no framing, no sniffing, and
/// scripts and styles from this origin only.
fn secured(mut builder: http::response::Builder) -> http::response::Builder {
    let headers = [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
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

fn html_response(status: http::StatusCode, html: String) -> Response {
    secured(http::Response::builder().status(status))
        .header("content-type", "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(html)))
        .unwrap_or_default()
}

fn plain(status: http::StatusCode, text: &'static str) -> Response {
    secured(http::Response::builder().status(status))
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap_or_default()
}

fn redirect(location: &'static str) -> Response {
    secured(http::Response::builder().status(http::StatusCode::SEE_OTHER))
        .header("location", location)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}
