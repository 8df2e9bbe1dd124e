//! The Postgres primary among the hosts of a database URL, found at start and followed across
//! a failover without a restart, a virtual IP or a proxy.
//!
//! sqlx connects to one host and ignores `target_session_attrs`. Tandem's pools take libpq's
//! multi-host form instead, as pg_auto_failover's `pg_autoctl show uri` prints it:
//! `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`.
//!
//! - The URL is split into one set of connect options per host, each with the URL's user,
//!   password, database and other parameters ([`Hosts::parse`]).
//! - The pool opens on the first host, in the URL's order, that accepts the session asked for.
//!   `read-write` means `SHOW transaction_read_only` answers `off`: a standby fails that, and so
//!   does a standby just promoted that pg_auto_failover keeps read-only until the old primary
//!   must have stopped (its `primary_demote_timeout`), where `pg_is_in_recovery()` would
//!   already pass it.
//! - With `read-write`, every new connection of the pool is checked the same way
//!   (`after_connect`): a read-only session is closed, never handed out, and the pool tries
//!   again until its acquire timeout; the request then fails `UNAVAILABLE` and its caller
//!   retries it by request id.
//! - With several hosts, a watcher checks the pool's host every
//!   `database.primary_check_interval_ms` on a connection of its own. Once the host no longer
//!   answers, or no longer accepts writes, the watcher tries every host in order, each within
//!   `database.host_connect_timeout_ms`, points the pool's new connections at the first that
//!   qualifies (`Pool::set_connect_options`), and retires the idle connections opened before
//!   the move (`before_acquire`). It ends when the pool is closed.
//!
//! A URL of one host without `target_session_attrs` goes to sqlx unchanged: no check, no
//! watcher. Nothing here writes the URL, its password or a host's full options to a log or an
//! error: hosts are named by `host:port` only.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};

/// What a session must be, from the URL's `target_session_attrs`: libpq's parameter, of which
/// the two values that fit a service's pool are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// `any`: the first host that accepts a connection.
    Any,
    /// `read-write`: the first host whose sessions may write.
    ReadWrite,
}

/// One host of a URL: its connect options (which hold the password) and its name for logs.
#[derive(Clone)]
pub struct Host {
    /// `host:port`, or the socket directory: what logs and messages call it.
    label: String,
    options: PgConnectOptions,
}

impl Host {
    /// `host:port`, or the socket directory.
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl std::fmt::Debug for Host {
    /// The label only: the options hold the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// A database URL that names several hosts, or asks for a kind of session: the hosts in the
/// URL's order, and what a session must be.
#[derive(Debug, Clone)]
pub struct Hosts {
    hosts: Vec<Host>,
    attrs: SessionAttrs,
}

/// Why a database URL cannot be split into hosts. The messages name the URL's part, never
/// the URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// `target_session_attrs` has a value other than `any` and `read-write`.
    #[error("target_session_attrs must be any or read-write, not {0:?}")]
    SessionAttrs(String),
    /// `target_session_attrs` is given more than once.
    #[error("target_session_attrs is given more than once")]
    SessionAttrsRepeated,
    /// The host list has an empty entry (`h1,,h2`, or a trailing comma).
    #[error("host {0} of the host list is empty")]
    EmptyHost(usize),
    /// A host's port is not a number from 1 to 65535.
    #[error("host {0} of the host list has a port that is not 1 to 65535")]
    Port(usize),
    /// An IPv6 address without brackets.
    #[error("host {0} of the host list is an IPv6 address without brackets (write [::1]:5432)")]
    Ipv6(usize),
    /// `host=`, `hostaddr=` or `port=` beside several hosts would send every host's
    /// connections to the one they name.
    #[error(
        "with several hosts, hosts and ports go in the host list, not in host=, hostaddr= or port="
    )]
    HostParameter,
    /// sqlx refuses the URL of one host.
    #[error("host {index} of the host list: {problem}")]
    Options {
        /// From 1, in the URL's order.
        index: usize,
        /// sqlx's reason.
        problem: String,
    },
}

/// The parts of a URL as written, before any host is parsed.
#[derive(Debug, PartialEq, Eq)]
struct Split<'a> {
    /// Each host's own URL: the original with that host alone and without
    /// `target_session_attrs`.
    urls: Vec<String>,
    /// The hosts as written (`h1:5432`, `[::1]`).
    hosts: Vec<&'a str>,
    attrs: Option<SessionAttrs>,
}

/// Splits `url` into one URL per host. `None`: a URL that is not `scheme://...`, which sqlx
/// judges itself.
fn split(url: &str) -> Result<Option<Split<'_>>, UrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The password may hold any character but an unescaped '/', '?' or '@': the host list
    // starts after the last '@'.
    let (userinfo, host_list) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut attrs = None;
    let mut kept = Vec::new();
    let mut names_a_host = false;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "target_session_attrs" {
            let parsed = match value {
                "any" => SessionAttrs::Any,
                "read-write" => SessionAttrs::ReadWrite,
                other => return Err(UrlError::SessionAttrs(other.to_owned())),
            };
            if attrs.replace(parsed).is_some() {
                return Err(UrlError::SessionAttrsRepeated);
            }
        } else {
            names_a_host |= matches!(key, "host" | "hostaddr" | "port");
            kept.push(pair);
        }
    }
    let hosts: Vec<&str> = host_list.split(',').collect();
    if hosts.len() > 1 && names_a_host {
        return Err(UrlError::HostParameter);
    }
    for (index, host) in hosts.iter().enumerate() {
        check_host(index + 1, host, hosts.len())?;
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let urls = hosts
        .iter()
        .map(|host| format!("{scheme}://{userinfo}{host}{path}{query}"))
        .collect();
    Ok(Some(Split { urls, hosts, attrs }))
}

/// Checks host `index` (from 1) of a list of `count`: `name`, `name:port`, `[v6]` or
/// `[v6]:port`. A URL of one host may leave its host out (sqlx's default then applies).
fn check_host(index: usize, host: &str, count: usize) -> Result<(), UrlError> {
    if host.is_empty() {
        return if count == 1 {
            Ok(())
        } else {
            Err(UrlError::EmptyHost(index))
        };
    }
    let port = if let Some(bracketed) = host.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or(UrlError::Ipv6(index))?;
        if address.is_empty() {
            return Err(UrlError::EmptyHost(index));
        }
        match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(UrlError::Port(index))?),
        }
    } else {
        match host.split(':').count() {
            1 => None,
            2 => host.split_once(':').map(|(_, port)| port),
            _ => return Err(UrlError::Ipv6(index)),
        }
    };
    match port {
        None => Ok(()),
        Some(port) if port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
        Some(_) => Err(UrlError::Port(index)),
    }
}

impl Hosts {
    /// The hosts of `url` and what a session must be. `None` for a URL of one host without
    /// `target_session_attrs`: the pool takes it as it is.
    pub fn parse(url: &str) -> Result<Option<Hosts>, UrlError> {
        let Some(split) = split(url)? else {
            return Ok(None);
        };
        if split.hosts.len() == 1 && split.attrs.is_none() {
            return Ok(None);
        }
        let hosts = split
            .urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let options: PgConnectOptions =
                    url.parse().map_err(|e: sqlx::Error| UrlError::Options {
                        index: index + 1,
                        problem: e.to_string(),
                    })?;
                Ok(Host {
                    label: label(&options),
                    options,
                })
            })
            .collect::<Result<Vec<_>, UrlError>>()?;
        Ok(Some(Hosts {
            hosts,
            attrs: split.attrs.unwrap_or(SessionAttrs::Any),
        }))
    }

    /// The hosts, in the URL's order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// What a session must be.
    pub fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// The first host, in order, that accepts a session of the kind asked for, with that
    /// session; otherwise why each host refused, as one line.
    async fn first(&self, connect_timeout: Duration) -> Result<(usize, PgConnection), String> {
        let mut refusals = Vec::with_capacity(self.hosts.len());
        for (index, host) in self.hosts.iter().enumerate() {
            match open(host, self.attrs, connect_timeout).await {
                Ok(connection) => return Ok((index, connection)),
                Err(why) => refusals.push(format!("{} ({why})", host.label)),
            }
        }
        Err(refusals.join(", "))
    }
}

/// `host:port`, or the socket directory.
fn label(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// A session on `host` that is of the kind `attrs` asks for, opened and checked within
/// `timeout`; otherwise why not.
async fn open(host: &Host, attrs: SessionAttrs, timeout: Duration) -> Result<PgConnection, String> {
    let opened = tokio::time::timeout(timeout, async {
        let mut connection = PgConnection::connect_with(&host.options)
            .await
            .map_err(|e| e.to_string())?;
        match qualifies(&mut connection, attrs).await {
            Ok(()) => Ok(connection),
            Err(error) => {
                connection.close().await.ok();
                Err(error.to_string())
            }
        }
    })
    .await;
    opened.unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

/// Whether the session on `connection` is of the kind `attrs` asks for.
async fn qualifies(connection: &mut PgConnection, attrs: SessionAttrs) -> Result<(), sqlx::Error> {
    match attrs {
        SessionAttrs::Any => Ok(()),
        SessionAttrs::ReadWrite => {
            let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
                .fetch_one(&mut *connection)
                .await?;
            if read_only == "off" {
                Ok(())
            } else {
                Err(sqlx::Error::Database(Box::new(ReadOnlySession)))
            }
        }
    }
}

/// A session that cannot write, where the URL asked for `read-write`. It carries SQLSTATE
/// 25006 (read_only_sql_transaction), which `database::classify` reads as `Unavailable`: the
/// same as a write that a read-only server refuses.
#[derive(Debug)]
struct ReadOnlySession;

impl std::fmt::Display for ReadOnlySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(sqlx::error::DatabaseError::message(self))
    }
}

impl std::error::Error for ReadOnlySession {}

impl sqlx::error::DatabaseError for ReadOnlySession {
    fn message(&self) -> &str {
        "the session is read-only (transaction_read_only is on) and the URL asks for \
         target_session_attrs=read-write"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("25006"))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

/// How the watcher of a multi-host pool checks and probes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// How often the pool's host is checked.
    pub(crate) interval: Duration,
    /// How long one host may take to accept a connection and answer.
    pub(crate) connect_timeout: Duration,
    /// How long the pool may take to find its first host at start (the pool's acquire
    /// timeout).
    pub(crate) start_timeout: Duration,
}

/// Opens a pool with `pool` on `url`: as sqlx does for a URL of one host without
/// `target_session_attrs`, otherwise on the first host that accepts the session asked for,
/// followed by a watcher when there are several.
pub(crate) async fn open_pool(
    pool: PgPoolOptions,
    url: &str,
    watch: Watch,
) -> Result<PgPool, sqlx::Error> {
    let hosts = match Hosts::parse(url) {
        Ok(Some(hosts)) => hosts,
        Ok(None) => return pool.connect(url).await,
        Err(error) => return Err(sqlx::Error::Configuration(Box::new(error))),
    };
    let pool = match hosts.attrs {
        SessionAttrs::Any => pool,
        SessionAttrs::ReadWrite => pool.after_connect(|connection, _| {
            Box::pin(async move { qualifies(connection, SessionAttrs::ReadWrite).await })
        }),
    };
    // When the watcher moved the pool, the time of the move in milliseconds after `epoch`
    // (0: never): idle connections older than that go to the old host, and are closed.
    let epoch = Instant::now();
    let moved_ms = Arc::new(AtomicU64::new(0));
    let pool = {
        let moved_ms = moved_ms.clone();
        pool.before_acquire(move |_, meta| {
            let moved = moved_ms.load(Ordering::Relaxed);
            let since_move = epoch.elapsed().saturating_sub(Duration::from_millis(moved));
            let current = moved == 0 || meta.age <= since_move;
            Box::pin(async move { Ok(current) })
        })
    };
    // The first host, tried in order until one qualifies or the start timeout runs out.
    let deadline = Instant::now() + watch.start_timeout;
    let (index, probe) = loop {
        match hosts.first(watch.connect_timeout).await {
            Ok(found) => break found,
            Err(refusals) if Instant::now() >= deadline => {
                return Err(sqlx::Error::Io(std::io::Error::other(format!(
                    "no host of the database URL accepts {} sessions: {refusals}",
                    match hosts.attrs {
                        SessionAttrs::Any => "any",
                        SessionAttrs::ReadWrite => "read-write",
                    }
                ))));
            }
            Err(_) => tokio::time::sleep(watch.interval.min(Duration::from_millis(500))).await,
        }
    };
    let pool = pool
        .connect_with(hosts.hosts[index].options.clone())
        .await?;
    if hosts.hosts.len() > 1 {
        tracing::info!(
            host = %hosts.hosts[index].label,
            "database pool opened on the first qualifying host"
        );
        tokio::spawn(follow(
            pool.clone(),
            hosts,
            index,
            probe,
            watch,
            epoch,
            moved_ms,
        ));
    } else {
        probe.close().await.ok();
    }
    Ok(pool)
}

/// The watcher: checks the pool's host, host `current` of `hosts`, on `probe` every interval;
/// when it no longer qualifies, moves the pool to the first host that does. Ends when the pool
/// is closed.
async fn follow(
    pool: PgPool,
    hosts: Hosts,
    mut current: usize,
    probe: PgConnection,
    watch: Watch,
    epoch: Instant,
    moved_ms: Arc<AtomicU64>,
) {
    let mut probe = Some(probe);
    // Whether the pool's host was found lost and no other qualified yet (logged once).
    let mut lost = false;
    loop {
        tokio::select! {
            () = pool.close_event() => break,
            () = tokio::time::sleep(watch.interval) => {}
        }
        let still = match probe.as_mut() {
            Some(connection) => {
                tokio::time::timeout(watch.connect_timeout, qualifies(connection, hosts.attrs))
                    .await
                    .map_err(|_| "no answer".to_owned())
                    .and_then(|checked| checked.map_err(|e| e.to_string()))
            }
            None => Err("not connected".to_owned()),
        };
        let why = match still {
            Ok(()) => continue,
            Err(why) => why,
        };
        // Dropped, not closed: its host may not answer.
        drop(probe.take());
        if !lost {
            tracing::warn!(
                host = %hosts.hosts[current].label,
                reason = %why,
                "the database host no longer qualifies; looking for the primary among the URL's hosts"
            );
        }
        match hosts.first(watch.connect_timeout).await {
            Ok((index, connection)) => {
                probe = Some(connection);
                lost = false;
                if index != current {
                    pool.set_connect_options(hosts.hosts[index].options.clone());
                    // At least 1: 0 means never moved.
                    let now_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                    moved_ms.store(now_ms.max(1), Ordering::Relaxed);
                    tracing::warn!(
                        from = %hosts.hosts[current].label,
                        to = %hosts.hosts[index].label,
                        "database primary moved; new connections go to the new host"
                    );
                    current = index;
                }
            }
            Err(refusals) => {
                if !lost {
                    tracing::warn!(hosts = %refusals, "no host of the database URL qualifies yet");
                }
                lost = true;
            }
        }
    }
    if let Some(connection) = probe {
        connection.close().await.ok();
    }
}

/// The first host of `url`, in order, that accepts a session of the kind the URL asks for
/// (any host when it asks for none), each given `connect_timeout`: its `host:port`, or `None`
/// when none does now. For tools and drills that watch a failover from outside.
pub async fn qualifying_host(
    url: &str,
    connect_timeout: Duration,
) -> Result<Option<String>, UrlError> {
    let hosts = match Hosts::parse(url)? {
        Some(hosts) => hosts,
        None => Hosts {
            hosts: vec![Host {
                label: String::new(),
                options: url.parse().map_err(|e: sqlx::Error| UrlError::Options {
                    index: 1,
                    problem: e.to_string(),
                })?,
            }],
            attrs: SessionAttrs::Any,
        },
    };
    match hosts.first(connect_timeout).await {
        Ok((index, connection)) => {
            connection.close().await.ok();
            let host = &hosts.hosts[index];
            Ok(Some(if host.label.is_empty() {
                label(&host.options)
            } else {
                host.label.clone()
            }))
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host list splits into one URL per host, each keeping the user, password, database
    /// and other parameters and losing `target_session_attrs`; ports are each host's own, and
    /// a host without one gets sqlx's default.
    #[test]
    fn a_host_list_splits_into_one_url_per_host() {
        let cases: &[(&str, &[&str], Option<SessionAttrs>)] = &[
            (
                "postgres://u:p%40ss@h1:5433,h2:5434/db?target_session_attrs=read-write&sslmode=prefer",
                &[
                    "postgres://u:p%40ss@h1:5433/db?sslmode=prefer",
                    "postgres://u:p%40ss@h2:5434/db?sslmode=prefer",
                ],
                Some(SessionAttrs::ReadWrite),
            ),
            (
                "postgresql://h1,h2:6000/db?sslmode=disable&target_session_attrs=any",
                &[
                    "postgresql://h1/db?sslmode=disable",
                    "postgresql://h2:6000/db?sslmode=disable",
                ],
                Some(SessionAttrs::Any),
            ),
            (
                "postgres://u@[::1]:5433,[fe80::1]/db",
                &["postgres://u@[::1]:5433/db", "postgres://u@[fe80::1]/db"],
                None,
            ),
            (
                "postgres://u@h1:5432,h2:5432?target_session_attrs=read-write",
                &["postgres://u@h1:5432", "postgres://u@h2:5432"],
                Some(SessionAttrs::ReadWrite),
            ),
            (
                "postgres://u@h1:5432/db",
                &["postgres://u@h1:5432/db"],
                None,
            ),
        ];
        for (url, urls, attrs) in cases {
            let split = split(url).unwrap().unwrap();
            assert_eq!(split.urls, *urls, "{url}");
            assert_eq!(split.attrs, *attrs, "{url}");
        }
    }

    /// Each host's options are the URL's, with that host and port: the default port where the
    /// host names none, IPv6 addresses in brackets.
    #[test]
    fn each_host_keeps_the_urls_options() {
        let hosts = Hosts::parse(
            "postgres://tandem:secret@127.0.0.1:5433,[::1],db.example:6000/tandem_vault\
             ?target_session_attrs=read-write&application_name=vault",
        )
        .unwrap()
        .unwrap();
        assert_eq!(hosts.attrs(), SessionAttrs::ReadWrite);
        let default_port = PgConnectOptions::new_without_pgpass().get_port();
        let expected = [
            ("127.0.0.1", 5433),
            ("[::1]", default_port),
            ("db.example", 6000),
        ];
        assert_eq!(hosts.hosts().len(), expected.len());
        for (host, (name, port)) in hosts.hosts().iter().zip(expected) {
            assert_eq!(host.options.get_host(), name);
            assert_eq!(host.options.get_port(), port);
            assert_eq!(host.options.get_username(), "tandem");
            assert_eq!(host.options.get_database(), Some("tandem_vault"));
            assert_eq!(host.options.get_application_name(), Some("vault"));
            assert_eq!(host.label(), format!("{name}:{port}"));
            // Neither the label nor Debug shows the password.
            assert!(!format!("{host:?}").contains("secret"));
        }
    }

    /// A URL of one host without `target_session_attrs` is left to sqlx as it is; with it, it
    /// is one host whose sessions are checked.
    #[test]
    fn one_host_is_left_alone_unless_it_asks_for_a_session() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/tandem_vault",
            "postgres:///tandem?host=/var/run/postgresql",
            "postgres://u:p@h/db?sslmode=disable&application_name=x",
            "not a url",
        ] {
            assert!(Hosts::parse(url).unwrap().is_none(), "{url}");
        }
        let one = Hosts::parse("postgres://u@h:5432/db?target_session_attrs=read-write")
            .unwrap()
            .unwrap();
        assert_eq!(one.hosts().len(), 1);
        assert_eq!(one.attrs(), SessionAttrs::ReadWrite);
    }

    /// Values Tandem does not take, and host lists it cannot split, are refused with the part
    /// named and without the URL (its password) in the message.
    #[test]
    fn bad_urls_are_refused_by_name() {
        let cases = [
            (
                "postgres://u:secret@h1,h2/db?target_session_attrs=standby",
                UrlError::SessionAttrs("standby".into()),
            ),
            (
                "postgres://u:secret@h1,h2/db?target_session_attrs=read-only",
                UrlError::SessionAttrs("read-only".into()),
            ),
            (
                "postgres://u:secret@h1/db?target_session_attrs=",
                UrlError::SessionAttrs(String::new()),
            ),
            (
                "postgres://u:secret@h1,h2/db?target_session_attrs=any&target_session_attrs=any",
                UrlError::SessionAttrsRepeated,
            ),
            ("postgres://u:secret@h1,,h2/db", UrlError::EmptyHost(2)),
            ("postgres://u:secret@h1,h2,/db", UrlError::EmptyHost(3)),
            ("postgres://u:secret@h1:0,h2/db", UrlError::Port(1)),
            ("postgres://u:secret@h1,h2:99999/db", UrlError::Port(2)),
            ("postgres://u:secret@h1,h2:x/db", UrlError::Port(2)),
            ("postgres://u:secret@h1,[::1]x/db", UrlError::Port(2)),
            ("postgres://u:secret@h1,::1/db", UrlError::Ipv6(2)),
            ("postgres://u:secret@h1,[::1/db", UrlError::Ipv6(2)),
            (
                "postgres://u:secret@h1,h2/db?port=5432",
                UrlError::HostParameter,
            ),
            (
                "postgres://u:secret@h1,h2/db?host=/tmp",
                UrlError::HostParameter,
            ),
        ];
        for (url, expected) in cases {
            let error = Hosts::parse(url).unwrap_err();
            assert_eq!(error, expected, "{url}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        let error = Hosts::parse("postgres://u:secret@h1,h2/db?sslmode=sometimes").unwrap_err();
        assert!(
            matches!(error, UrlError::Options { index: 1, .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    /// A read-only session carries SQLSTATE 25006, which callers retry.
    #[test]
    fn a_read_only_session_is_unavailable() {
        let error = sqlx::Error::Database(Box::new(ReadOnlySession));
        assert_eq!(
            crate::database::classify(&error),
            crate::database::StorageFailure::Unavailable
        );
    }
}
