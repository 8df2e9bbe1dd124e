//! A pool on a multi-host database URL (`tandem_runtime::primary`) against a real Postgres: it
//! opens on the first host that takes writes, passes over hosts that are down or read-only,
//! and follows the primary to the next host when its own stops answering. A TCP proxy in
//! front of the test server plays a primary that can be killed; the server itself plays the
//! standby that takes over.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use tandem_runtime::settings::{DatabaseSettings, SecretString};
use tandem_tests::TestDatabase;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A TCP proxy on 127.0.0.1 to `target`; dropping it closes its listener and every connection
/// through it, as a host that died would.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            // Aborting the accept loop drops the set, which aborts every connection's copy.
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy { port, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The test database's URL with `hosts` as its host list and `query` as its parameters.
fn url_with_hosts(database: &TestDatabase, hosts: &[String], query: &str) -> String {
    let (scheme, rest) = database.url.split_once("://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    let path = path.split('?').next().unwrap();
    format!("{scheme}://{userinfo}{}{path}?{query}", hosts.join(","))
}

/// The test server's `host:port`.
fn server(database: &TestDatabase) -> String {
    let options: PgConnectOptions = database.url.parse().unwrap();
    format!("{}:{}", options.get_host(), options.get_port())
}

/// A closed port of 127.0.0.1.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn settings(url: String) -> DatabaseSettings {
    DatabaseSettings {
        url: SecretString::new(url),
        acquire_timeout_ms: 2_000,
        primary_check_interval_ms: 100,
        host_connect_timeout_ms: 1_000,
        ..DatabaseSettings::local("unused")
    }
}

/// A host that refuses connections is passed over: the pool opens on the next one.
#[tokio::test]
async fn a_host_that_is_down_is_passed_over() {
    let database = TestDatabase::create().await;
    let url = url_with_hosts(
        &database,
        &[closed_port(), server(&database)],
        "target_session_attrs=read-write",
    );
    let pool = settings(url).connect().await.unwrap();
    assert_eq!(
        format!(
            "{}:{}",
            pool.connect_options().get_host(),
            pool.connect_options().get_port()
        ),
        server(&database)
    );
    sqlx::query("CREATE TABLE written (id int)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// With `read-write`, read-only sessions do not count: a pool whose every host is down or
/// read-only does not open, and its error names each host and why, never the URL.
#[tokio::test]
async fn read_only_hosts_do_not_open_a_read_write_pool() {
    let database = TestDatabase::create().await;
    let dead = closed_port();
    let url = url_with_hosts(
        &database,
        &[dead.clone(), server(&database)],
        "target_session_attrs=read-write&options=-c%20default_transaction_read_only%3Don",
    );
    let started = Instant::now();
    let error = settings(url).connect().await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10), "{error}");
    assert!(
        error.contains(&dead) && error.contains(&server(&database)) && error.contains("read-only"),
        "{error}"
    );
    assert!(!error.contains("postgres://"), "{error}");
}

/// When the pool's host dies, the watcher moves the pool to the next host that takes writes:
/// new connections go there and writes succeed again within moments, without reopening the
/// pool.
#[tokio::test]
async fn the_pool_follows_the_primary_to_the_next_host() {
    let database = TestDatabase::create().await;
    let proxy = Proxy::start(server(&database)).await;
    let first = format!("127.0.0.1:{}", proxy.port);
    let url = url_with_hosts(
        &database,
        &[first.clone(), server(&database)],
        "target_session_attrs=read-write",
    );
    let pool = settings(url).connect().await.unwrap();
    let host = |pool: &sqlx::PgPool| {
        let options = pool.connect_options();
        format!("{}:{}", options.get_host(), options.get_port())
    };
    assert_eq!(host(&pool), first);
    sqlx::query("CREATE TABLE written (id int)")
        .execute(&pool)
        .await
        .unwrap();
    // Idle connections through the proxy, which die with it.
    let held = futures::future::join_all((0..3).map(|_| pool.acquire())).await;
    drop(held);

    drop(proxy);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures = 0;
    loop {
        match sqlx::query("INSERT INTO written VALUES (1)")
            .execute(&pool)
            .await
        {
            Ok(_) => break,
            Err(error) => {
                failures += 1;
                assert!(Instant::now() < deadline, "no write after 10 s: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(
        host(&pool),
        server(&database),
        "after {failures} failed writes"
    );
    pool.close().await;
}

/// The probe tools and drills use names the first host that takes writes, passing over one
/// that is down, and names none when every host is down.
#[tokio::test]
async fn the_probe_names_the_host_that_takes_writes() {
    let database = TestDatabase::create().await;
    let timeout = Duration::from_secs(1);
    let url = url_with_hosts(
        &database,
        &[closed_port(), server(&database)],
        "target_session_attrs=read-write&sslmode=prefer",
    );
    let found = tandem_runtime::primary::qualifying_host(&url, timeout).await;
    assert_eq!(found.unwrap(), Some(server(&database)));
    let url = url_with_hosts(&database, &[closed_port(), closed_port()], "");
    let found = tandem_runtime::primary::qualifying_host(&url, timeout).await;
    assert_eq!(found.unwrap(), None);
}
