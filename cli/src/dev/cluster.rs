//! A Postgres cluster of `tandemctl dev`'s own, for a machine where PostgreSQL is installed but
//! no server is reachable: made once with the installed `initdb` under the dev directory
//! (`<dir>/postgres`), started on a spare port of 127.0.0.1 and its Unix socket only, with a
//! superuser password made with it and kept beside it (0600), and stopped when the dev stack
//! stops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::Connection as _;

/// How long a server named by the URL is given to answer before the dev stack starts its own.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the private cluster is given to start.
const START_TIMEOUT_S: u32 = 60;
/// The system user a cluster runs as when `tandemctl` runs as root (Postgres refuses root).
const SERVICE_USER: &str = "postgres";

/// A private cluster this process started; stopped when dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    as_service_user: bool,
    url: String,
}

impl PrivateCluster {
    /// If `server_url` reaches a Postgres, `None`. Otherwise, if it names this machine and
    /// PostgreSQL's programs are installed, starts the private cluster of `dir` (made on first
    /// use) and returns it; else the connection's error.
    pub async fn start_if_needed(server_url: &str, dir: &Path) -> anyhow::Result<Option<Self>> {
        let reached =
            tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect(server_url)).await;
        // Only a server that is not there is replaced: one that answers and refuses (a wrong
        // password, a missing database) is reported, never run around.
        let error = match reached {
            Ok(Ok(conn)) => {
                conn.close().await.ok();
                return Ok(None);
            }
            Ok(Err(sqlx::Error::Io(io))) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow::Error::from(io)
            }
            Ok(Err(other)) => {
                return Err(anyhow::Error::from(other).context(
                    "cannot connect to Postgres (set DATABASE_URL, or start it)".to_owned(),
                ));
            }
            Err(_) => anyhow::anyhow!("no answer within {PROBE_TIMEOUT:?}"),
        };
        let local = url::Url::parse(server_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .is_some_and(|host| matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]"));
        let Some(bin) = local.then(installed_bin).flatten() else {
            return Err(error.context(
                "cannot connect to Postgres (set DATABASE_URL, start it, or install PostgreSQL \
                 for tandemctl dev to start its own)",
            ));
        };
        let dir = std::path::absolute(dir)?;
        // pg_ctl passes its paths through a shell: only plain path characters go there.
        anyhow::ensure!(
            path_str(&dir)?
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)),
            "the dev directory {} holds characters a private cluster's path may not \
             (A-Z a-z 0-9 / . _ -): choose another --dir",
            dir.display()
        );
        let cluster =
            tokio::task::spawn_blocking(move || PrivateCluster::start(bin, &dir)).await??;
        // Ready once it accepts a connection (pg_ctl -w waited for the socket already).
        let mut last = None;
        for _ in 0..50 {
            match sqlx::PgConnection::connect(&cluster.url).await {
                Ok(conn) => {
                    conn.close().await.ok();
                    return Ok(Some(cluster));
                }
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow::anyhow!(
            "the private cluster does not accept connections: {last:?}"
        ))
    }

    /// Its server URL (database `postgres`).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn start(bin: PathBuf, dir: &Path) -> anyhow::Result<PrivateCluster> {
        let root = dir.join("postgres");
        let data = root.join("data");
        let as_service_user = running_as_root();
        std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        if as_service_user {
            // The service user reaches its directory through the dev directory, which may
            // be private to root: let others pass through it (not list it).
            use std::os::unix::fs::PermissionsExt as _;
            let mut mode = std::fs::metadata(dir)?.permissions();
            mode.set_mode(mode.mode() | 0o001);
            std::fs::set_permissions(dir, mode)?;
            run(Command::new("chown").args([SERVICE_USER, path_str(&root)?]))?;
            let reachable = Command::new("runuser")
                .args(["-u", SERVICE_USER, "--", "test", "-w", path_str(&root)?])
                .status()
                .is_ok_and(|status| status.success());
            anyhow::ensure!(
                reachable,
                "the private cluster's directory {} is out of the {SERVICE_USER} user's reach \
                 (a parent directory is private): choose a --dir others may pass through",
                root.display()
            );
        }
        let mut cluster = PrivateCluster {
            bin,
            data,
            as_service_user,
            url: String::new(),
        };
        // The superuser's password: made with the cluster, kept beside it (0600), so that
        // other users of the machine cannot connect over loopback or the socket.
        let password_file = root.join("password");
        if !cluster.data.join("PG_VERSION").exists() {
            let mut password = [0u8; 24];
            getrandom::getrandom(&mut password).context("random source")?;
            write_private(&password_file, hex::encode(password).as_bytes())?;
            if as_service_user {
                run(Command::new("chown").args([SERVICE_USER, path_str(&password_file)?]))?;
            }
            let data = path_str(&cluster.data)?.to_owned();
            let pwfile = format!("--pwfile={}", path_str(&password_file)?);
            run(&mut cluster.command(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    &pwfile,
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
            ))
            .context("initdb of the private cluster")?;
        }
        let password = std::fs::read_to_string(&password_file).with_context(|| {
            format!(
                "the private cluster's password ({})",
                password_file.display()
            )
        })?;
        // A cluster an earlier run left running (killed before it could stop it) is stopped
        // first: it listens on a port that run chose.
        cluster.stop();
        let port = spare_port()?;
        let options = format!(
            "-p {port} -k {socket} -c listen_addresses=127.0.0.1",
            socket = path_str(&root)?
        );
        let log = root.join("postgres.log");
        let data = path_str(&cluster.data)?.to_owned();
        run(&mut cluster.command(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                &START_TIMEOUT_S.to_string(),
                "-o",
                &options,
                "start",
            ],
        ))
        .with_context(|| format!("starting the private cluster (its log: {})", log.display()))?;
        cluster.url = format!(
            "postgres://postgres:{}@127.0.0.1:{port}/postgres",
            password.trim()
        );
        println!(
            "no Postgres reachable: started a private cluster in {} on 127.0.0.1:{port} \
             (stopped on exit)",
            cluster.data.display()
        );
        Ok(cluster)
    }

    /// `program` of the installed PostgreSQL with `args`, as the service user when root.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        if self.as_service_user {
            let mut command = Command::new("runuser");
            command
                .args(["-u", SERVICE_USER, "--"])
                .arg(program)
                .args(args);
            command
        } else {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
    }

    /// Stops the cluster (fast shutdown) if it runs; errors are ignored.
    fn stop(&mut self) {
        let Ok(data) = path_str(&self.data).map(str::to_owned) else {
            return;
        };
        let _ = self
            .command("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory of the newest installed PostgreSQL's programs (Debian's
/// `/usr/lib/postgresql/<version>/bin`, or `initdb` on the PATH).
fn installed_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        })
    })
}

/// Whether this process runs as root (`/proc/self` belongs to the process's effective user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0)
}

/// A port of 127.0.0.1 free at this moment.
fn spare_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Writes `contents` to `path`, readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

/// Runs `command`, failing with its output if it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{:?} failed ({}): {}{}",
        command.get_program(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
