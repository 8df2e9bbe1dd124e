//! What Postgres tells about a benchmark: the machine's baselines, measured with `pgbench` in
//! the same invocation, and the transactions and WAL flushes a run cost.
//!
//! The baselines make figures comparable across noisy machines: a tokenization is one card row
//! and one audit row committed, so its rate is set beside pgbench's single-row insert (one row,
//! one commit per transaction); a ledger transfer beside TPC-B (three updates and an insert per
//! transaction, the classic debit-credit).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

/// The single-row insert transaction: one row of a narrow table with a primary key, committed.
const SINGLE_ROW_TABLE: &str = "CREATE TABLE tandem_single_row (\
     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
     account integer NOT NULL, \
     amount bigint NOT NULL, \
     created_at timestamptz NOT NULL DEFAULT now())";
const SINGLE_ROW_SCRIPT: &str = "\\set account random(1, 100000)\n\
     INSERT INTO tandem_single_row (account, amount) VALUES (:account, :account % 1000);\n";
/// The scale of the TPC-B tables (10 branches, a million accounts).
const TPCB_SCALE: u32 = 10;
/// Threads pgbench drives its clients from: one per core of the machines Tandem is measured on.
const PGBENCH_THREADS: usize = 2;

/// The machine's baselines: what Postgres alone does with as many clients as the benchmark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Baseline {
    /// pgbench clients.
    pub(crate) clients: usize,
    /// How long each pgbench run lasted.
    pub(crate) duration: Duration,
    /// Transactions per second of one single-row insert each.
    pub(crate) insert_tps: f64,
    /// Transactions per second of pgbench's built-in `tpcb-like`.
    pub(crate) tpcb_tps: f64,
}

impl Baseline {
    /// Runs both baselines on a fresh `tandem_bench_pgbench` database beside `server_url`, with
    /// `clients` clients (at least one) for `duration` each, and drops the database again.
    pub(crate) async fn measure(
        server_url: &str,
        clients: usize,
        duration: Duration,
    ) -> anyhow::Result<Baseline> {
        let clients = clients.max(1);
        let url = crate::dev::ensure_fresh_database(server_url, "tandem_bench_pgbench").await?;
        let measured = async {
            let mut conn = PgConnection::connect(&url).await?;
            sqlx::raw_sql(SINGLE_ROW_TABLE).execute(&mut conn).await?;
            conn.close().await.ok();
            let script = std::env::temp_dir().join(format!(
                "tandem-bench-single-row-{}.sql",
                std::process::id()
            ));
            std::fs::write(&script, SINGLE_ROW_SCRIPT)?;
            let script_arg = script.display().to_string();
            let insert = pgbench(&url, clients, duration, &["-f", &script_arg]).await;
            let _ = std::fs::remove_file(&script);
            let insert_tps = insert.context("pgbench single-row insert")?;

            run_checked(
                tokio::process::Command::new("pgbench").args([
                    "-i",
                    "-q",
                    "-s",
                    &TPCB_SCALE.to_string(),
                    &url,
                ]),
                "pgbench -i",
            )
            .await?;
            let tpcb_tps = pgbench(&url, clients, duration, &["-b", "tpcb-like"])
                .await
                .context("pgbench TPC-B")?;
            anyhow::Ok(Baseline {
                clients,
                duration,
                insert_tps,
                tpcb_tps,
            })
        }
        .await;
        crate::dev::drop_database(server_url, "tandem_bench_pgbench").await;
        measured
    }
}

impl std::fmt::Display for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "baseline: pgbench single-row insert {:.0} tps, TPC-B (scale {TPCB_SCALE}) {:.0} tps \
             (-c {} -j {PGBENCH_THREADS}, {} s each)",
            self.insert_tps,
            self.tpcb_tps,
            self.clients,
            self.duration.as_secs()
        )
    }
}

/// Runs pgbench with `clients` clients for `duration` and `workload` (its script arguments)
/// against `url`; returns its tps.
async fn pgbench(
    url: &str,
    clients: usize,
    duration: Duration,
    workload: &[&str],
) -> anyhow::Result<f64> {
    let threads = PGBENCH_THREADS.min(clients).to_string();
    let clients = clients.to_string();
    let seconds = duration.as_secs().max(1).to_string();
    let mut command = tokio::process::Command::new("pgbench");
    command
        .args(["-n", "-c", &clients, "-j", &threads, "-T", &seconds])
        .args(workload)
        .arg(url);
    let stdout = run_checked(&mut command, "pgbench").await?;
    tps_of(&stdout).context("pgbench printed no tps")
}

/// Runs `command` and returns its standard output, or an error with its standard error.
async fn run_checked(command: &mut tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .output()
        .await
        .with_context(|| format!("running {what} (is pgbench installed?)"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `tps = N (without initial connection time)` figure of pgbench's report.
fn tps_of(report: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
}

/// Postgres's running totals at one moment: committed transactions of the databases a run
/// uses, and WAL flushes of the whole server.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    /// `pg_stat_database.xact_commit` per database, in the order asked for.
    pub(crate) commits: Vec<i64>,
    /// `pg_stat_wal.wal_sync`: WAL flushes to disk, by every backend and the WAL writer.
    pub(crate) wal_syncs: i64,
}

impl Counters {
    /// Reads the totals of `databases` from the server of `server_url`. Postgres publishes a
    /// backend's counts at most once a second, so a difference over a window of many seconds
    /// is right to within a second's worth.
    pub(crate) async fn read(server_url: &str, databases: &[&str]) -> anyhow::Result<Counters> {
        let mut conn = PgConnection::connect(server_url).await?;
        let mut commits = Vec::with_capacity(databases.len());
        for database in databases {
            let count: Option<i64> =
                sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                    .bind(database)
                    .fetch_optional(&mut conn)
                    .await?;
            commits.push(count.unwrap_or(0));
        }
        let wal_syncs: i64 = sqlx::query_scalar("SELECT wal_sync FROM pg_stat_wal")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await.ok();
        Ok(Counters { commits, wal_syncs })
    }

    /// What happened between `self` and the later `then`.
    pub(crate) fn until(&self, then: &Counters) -> Counters {
        Counters {
            commits: self
                .commits
                .iter()
                .zip(&then.commits)
                .map(|(before, after)| after - before)
                .collect(),
            wal_syncs: then.wal_syncs - self.wal_syncs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tps figure is read from pgbench's report line, whatever follows it.
    #[test]
    fn tps_from_report() {
        let report = "transaction type: <builtin: TPC-B (sort of)>\n\
                      number of transactions actually processed: 22030\n\
                      latency average = 9.070 ms\n\
                      initial connection time = 20.417 ms\n\
                      tps = 2203.461297 (without initial connection time)\n";
        assert_eq!(tps_of(report), Some(2203.461297));
        assert_eq!(tps_of("tps = 8512.5\n"), Some(8512.5));
        for bad in [
            "",
            "latency average = 9 ms\n",
            "tps = fast\n",
            "  tps = 1\n",
        ] {
            assert_eq!(tps_of(bad), None, "{bad:?}");
        }
    }

    /// A window's counts are the later totals less the earlier ones, database by database.
    #[test]
    fn counter_differences() {
        let before = Counters {
            commits: vec![100, 7],
            wal_syncs: 40,
        };
        let after = Counters {
            commits: vec![1100, 507],
            wal_syncs: 340,
        };
        assert_eq!(
            before.until(&after),
            Counters {
                commits: vec![1000, 500],
                wal_syncs: 300
            }
        );
    }
}
