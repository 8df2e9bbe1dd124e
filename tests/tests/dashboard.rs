//! The dashboard (DESIGN section 13) over real HTTPS with client certificates, in front of a
//! running orchestrator: a person's certificate gets the pages their role may see, read from
//! the orchestrator on their behalf; the payment page shows the split `GetPayment` returns; a
//! certificate that is not a person's gets no page, a browser without one no connection; no
//! page holds a card number.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::version::TLS13;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_tests::stack::{Stack, group, legs, member, policy, state};
use tandem_tests::{TEST_PANS, pki};
use tandem_tls::identity::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";

/// A dashboard in this process in front of `stack`'s orchestrator; stops when dropped.
struct Dashboard {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Dashboard {
    async fn start(stack: &Stack) -> Dashboard {
        let mut settings = tandem_dashboard::config::Settings::default();
        let server = pki().dashboard_server();
        settings.tls.cert_path = server.cert_path;
        settings.tls.key_path = server.key_path;
        settings.tls.ca_path = server.ca_path;
        let client = pki().client(Role::Dashboard);
        settings.orchestrator.endpoint = format!("https://{}", stack.orchestrator.addr);
        settings.vault.endpoint = format!("https://{}", stack.vault.addr);
        for upstream in [&mut settings.orchestrator, &mut settings.vault] {
            upstream.cert_path = client.cert_path.clone();
            upstream.key_path = client.key_path.clone();
            upstream.ca_path = client.ca_path.clone();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            tandem_dashboard::run(listener, settings, stopped)
                .await
                .expect("dashboard runs");
        });
        Dashboard { addr, _stop: stop }
    }

    /// `method path` as `role` (or with no client certificate): the status and the body, or
    /// the connection's error.
    async fn request(
        &self,
        role: Option<Role>,
        method: &str,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut config = match role {
            Some(role) => tandem_tests::raw::client_config(role, &[&TLS13]),
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let ca = pki().client(Role::Reader).ca_path;
                for cert in rustls::pki_types::pem::PemObject::pem_file_iter(&ca).expect("CA") {
                    roots.add(cert.expect("CA certificate")).expect("root");
                }
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&[&TLS13])
                .expect("TLS 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut stream = connector.connect(name, tcp).await?;
        let request =
            format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    }

    async fn page(&self, role: Role, path: &str) -> (u16, String) {
        let answer = self
            .request(Some(role), "GET", path)
            .await
            .expect("an answer");
        for pan in TEST_PANS {
            assert!(!answer.1.contains(pan), "{path} shows a card number");
        }
        answer
    }
}

/// A split payment seen by a reader and by the treasury: in the list, filtered by state, and
/// on its own page with each card's part as `GetPayment` has it.
#[tokio::test]
async fn people_see_the_payments_their_role_may_read() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let created = stack
        .create_group(group(
            vec![
                // Limits per month, so that the group keeps each card's month-to-date spend.
                member(&a, "corporate Visa", 1, None, Some(100_000)),
                member(&b, "regional Mastercard", 2, None, Some(100_000)),
            ],
            policy(S::Weighted, &[(&a, 6000), (&b, 4000)], C::AllOrNothing),
        ))
        .await;
    let payment = stack.pay(&created.id, "INV-DASH-1", 2_050, None).await;
    assert_eq!(state(&payment), "SUCCEEDED");
    let dashboard = Dashboard::start(&stack).await;

    let (status, list) = dashboard.page(Role::Reader, "/payments").await;
    assert_eq!(status, 200, "{list}");
    assert!(
        list.contains(&payment.id) && list.contains("INV-DASH-1"),
        "{list}"
    );
    assert!(
        list.contains("Signed in as <strong>reader/test</strong>"),
        "{list}"
    );
    let (_, failed) = dashboard.page(Role::Reader, "/payments?state=FAILED").await;
    assert!(!failed.contains(&payment.id) && failed.contains("No payment matches"));
    let (status, refused) = dashboard.page(Role::Reader, "/payments?state=PAID").await;
    assert_eq!(status, 400, "{refused}");
    // Creation days (UTC), through ListPayments' time range: today's payment is in a range
    // from today, not in one that ended yesterday.
    let today = time::OffsetDateTime::now_utc().date();
    let yesterday = today.previous_day().expect("a day before");
    let (_, from_today) = dashboard
        .page(Role::Reader, &format!("/payments?from={today}"))
        .await;
    assert!(from_today.contains(&payment.id), "{from_today}");
    let (_, until_yesterday) = dashboard
        .page(Role::Reader, &format!("/payments?until={yesterday}"))
        .await;
    assert!(
        !until_yesterday.contains(&payment.id) && until_yesterday.contains("No payment matches"),
        "{until_yesterday}"
    );

    let (status, shown) = dashboard
        .page(Role::Treasury, &format!("/payments/{}", payment.id))
        .await;
    assert_eq!(status, 200, "{shown}");
    for (label, covered, _) in legs(&payment) {
        let amount =
            tandem_money::Money::new(tandem_money::Currency::parse("USD").expect("USD"), covered);
        assert!(
            shown.contains(&format!("<td>{label}</td>")) && shown.contains(&amount.to_string()),
            "{label} {amount} missing from:\n{shown}"
        );
    }
    let (status, _) = dashboard.page(Role::Reader, "/payments/pay_nothing").await;
    assert!(status == 404 || status == 400, "{status}");

    // The group: listed, and its cards with this month's spend as GetCardGroup has it.
    let (status, groups) = dashboard.page(Role::Treasury, "/card-groups").await;
    assert_eq!(status, 200, "{groups}");
    assert!(groups.contains(&created.id), "{groups}");
    let (status, shown) = dashboard
        .page(Role::Treasury, &format!("/card-groups/{}", created.id))
        .await;
    assert_eq!(status, 200, "{shown}");
    let read = stack
        .groups()
        .await
        .get_card_group(pb::GetCardGroupRequest {
            card_group_id: created.id.clone(),
        })
        .await
        .expect("get the group")
        .into_inner()
        .card_group
        .expect("group");
    for member in &read.members {
        let spent = member.month_to_date_spend.as_ref().expect("spend");
        let spent = tandem_money::Money::new(
            tandem_money::Currency::parse(&spent.currency_code).expect("currency"),
            spent.minor_units,
        );
        assert!(spent.minor_units > 0, "{member:?}");
        let row = shown
            .lines()
            .find(|line| line.contains(&format!("<td>{}</td>", member.label)))
            .unwrap_or_else(|| panic!("{} missing from:\n{shown}", member.label));
        assert!(row.contains(&spent.to_string()), "{row} without {spent}");
    }
}

/// A certificate that is not a person's gets no page; a browser without a certificate gets no
/// connection; a post not from the dashboard's own pages is refused; nothing but GET and POST
/// is served.
#[tokio::test]
async fn only_people_with_certificates_get_pages() {
    let stack = Stack::start().await;
    let dashboard = Dashboard::start(&stack).await;
    for role in [Role::Tokenizer, Role::Orchestrator, Role::Dashboard] {
        let (status, _) = dashboard.page(role, "/payments").await;
        assert_eq!(status, 403, "{role}");
    }
    // TLS 1.3 checks the client's certificate after the client's side of the handshake, so
    // the refusal arrives as the connection ends, before any answer.
    let anonymous = dashboard.request(None, "GET", "/payments").await;
    assert!(
        anonymous.as_ref().map_or(true, |(status, _)| *status == 0),
        "{anonymous:?}"
    );
    // Key status is the vault's, for admin alone: read on the admin's behalf.
    let (status, keys) = dashboard.page(Role::Admin, "/keys").await;
    assert_eq!(status, 200, "{keys}");
    assert!(keys.contains("data-field=\"seal\">UNSEALED"), "{keys}");
    assert!(keys.contains("<td>ACTIVE</td>"), "{keys}");
    let (status, _) = dashboard.page(Role::Treasury, "/keys").await;
    assert_eq!(status, 403);
    // A form's post from no origin (not the dashboard's pages) is refused before it is read.
    let (status, _) = dashboard
        .request(Some(Role::Treasury), "POST", "/review/pay_x")
        .await
        .expect("an answer");
    assert_eq!(status, 403);
    let (status, _) = dashboard
        .request(Some(Role::Treasury), "DELETE", "/payments")
        .await
        .expect("an answer");
    assert_eq!(status, 405);
}
