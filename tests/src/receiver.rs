//! A webhook receiver for tests: an HTTP/1.1 server on a local port (plain, or HTTPS with the
//! test PKI's server certificate) that records every request (its arrival, headers and body) and
//! answers each with the next of a script of answers, then with 204. It can be stopped and
//! started again on the same port (a receiver that is down).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The body.
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a webhook body is JSON")
    }

    /// The event's type (`type` of the body).
    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }
}

/// An answer of the script: a status and its headers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// Extra headers (`Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    /// A bare status.
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    received: Vec<Received>,
    script: VecDeque<Answer>,
}

/// The receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on a free local port.
    pub async fn start() -> Receiver {
        Receiver::start_with(None).await
    }

    /// Starts a receiver that speaks HTTPS with the test PKI's server certificate (for
    /// `localhost` and `127.0.0.1`, issued by the test CA).
    pub async fn start_tls() -> Receiver {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let files = crate::pki().orchestrator_server();
        let certs = CertificateDer::pem_file_iter(&files.cert_path)
            .expect("server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("server certificate");
        let key = PrivateKeyDer::from_pem_file(&files.key_path).expect("server key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Receiver::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let task = Some(tokio::spawn(serve(listener, state.clone(), tls.clone())));
        Receiver {
            addr,
            state,
            tls,
            task,
        }
    }

    /// The URL to register.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/hooks", self.addr.port())
    }

    /// Answers the next requests with `answers`, in order, then 204 again.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state
            .lock()
            .expect("receiver state")
            .script
            .extend(answers);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").received.clone()
    }

    /// Stops listening (connections are refused) until [`Receiver::resume`].
    pub fn pause(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind again");
        self.task = Some(tokio::spawn(serve(
            listener,
            self.state.clone(),
            self.tls.clone(),
        )));
    }

    /// Waits until `done` holds of the requests received, or fails after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhook receiver: {what} not within {within:?}; got {} requests: {:?}",
                received.len(),
                received
                    .iter()
                    .map(|r| (r.kind(), r.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.pause();
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let (id, timestamp, signature) = (
                        header("webhook-id"),
                        header("webhook-timestamp"),
                        header("webhook-signature"),
                    );
                    let body = request.into_body().collect().await?.to_bytes();
                    let answer = {
                        let mut state = state.lock().expect("receiver state");
                        let answer = state
                            .script
                            .pop_front()
                            .unwrap_or_else(|| Answer::status(204));
                        state.received.push(Received {
                            at: Instant::now(),
                            id,
                            timestamp,
                            signature,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            status: answer.status,
                        });
                        answer
                    };
                    let mut response = hyper::Response::builder().status(answer.status);
                    for (name, value) in answer.headers {
                        response = response.header(name, value);
                    }
                    Ok::<_, hyper::Error>(
                        response
                            .body(Full::new(Bytes::new()))
                            .expect("a response of a status and headers"),
                    )
                }
            });
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}
