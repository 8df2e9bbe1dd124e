//! Load in the shape a benchmark asks for, and what it measured: throughput, latency
//! percentiles, Postgres's transactions and WAL flushes, and the servers' memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Shape;
use super::postgres::{Baseline, Counters};
use super::stack::Stack;

/// The measured window of a run: after the warm-up, for the duration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Instant,
    pub(super) end: Instant,
}

impl Window {
    pub(super) fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    /// Whether an operation sent (or due) at `sent` and answered at `done` counts.
    pub(super) fn holds(&self, sent: Instant, done: Instant) -> bool {
        sent >= self.start && done <= self.end
    }
}

/// What one run measured, beside what the machine can do.
pub(super) struct Measured {
    pub(super) report: Report,
    /// Per server: its name and the Postgres transactions it committed in the window.
    pub(super) commits: Vec<(&'static str, i64)>,
    /// WAL flushes of the whole Postgres server in the window.
    pub(super) wal_syncs: i64,
    /// Per server: its name and peak resident memory, in bytes, if known.
    pub(super) peak_rss: Vec<(&'static str, Option<u64>)>,
}

impl Measured {
    pub(super) fn print(&self, baseline: Option<&Baseline>) {
        let report = &self.report;
        println!("{report}");
        let ops = report.ok as f64 + report.errors as f64;
        if ops > 0.0 {
            let total: i64 = self.commits.iter().map(|(_, n)| n).sum();
            let each: Vec<String> = self
                .commits
                .iter()
                .map(|(name, n)| format!("{name} {:.1}", *n as f64 / ops))
                .collect();
            println!(
                "  postgres per operation: {:.1} transactions ({}), {:.2} WAL flushes",
                total as f64 / ops,
                each.join(", "),
                self.wal_syncs as f64 / ops
            );
        }
        if !self.peak_rss.is_empty() {
            let each: Vec<String> = self
                .peak_rss
                .iter()
                .map(|(name, bytes)| match bytes {
                    Some(bytes) => format!("{name} {:.1} MiB", *bytes as f64 / 1048576.0),
                    None => format!("{name} unknown"),
                })
                .collect();
            println!("  peak RSS: {}", each.join(", "));
        }
        if let Some(baseline) = baseline {
            println!("  {baseline}");
            println!(
                "  ratio: {:.2}x single-row insert, {:.2}x TPC-B",
                report.per_second / baseline.insert_tps,
                report.per_second / baseline.tpcb_tps
            );
        }
    }
}

/// Loads the servers of `stack` with `operation` in the shape of `shape` and measures the
/// window: the report (`unit` per second), Postgres's counts for the stack's databases, and
/// the servers' peak memory.
pub(super) async fn measure<F, Fut>(
    shape: &Shape,
    stack: &Stack,
    unit: &'static str,
    operation: F,
) -> anyhow::Result<Measured>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let databases = stack.databases();
    let window = Window::after(shape.warmup, shape.duration);
    let names: Vec<&str> = databases.iter().map(|(_, db)| *db).collect();
    let (report, counted) = tokio::join!(
        run_load(shape, window, operation),
        count_in(&shape.database_url, &names, window),
    );
    let report = {
        let mut report = report?;
        report.unit = unit;
        report
    };
    let counted = counted?;
    Ok(Measured {
        report,
        commits: databases
            .iter()
            .map(|(server, _)| *server)
            .zip(counted.commits)
            .collect(),
        wal_syncs: counted.wal_syncs,
        peak_rss: stack.peak_rss(),
    })
}

/// Postgres's counts for `databases` over `window`.
pub(super) async fn count_in(
    server_url: &str,
    databases: &[&str],
    window: Window,
) -> anyhow::Result<Counters> {
    tokio::time::sleep_until(window.start.into()).await;
    let before = Counters::read(server_url, databases).await?;
    tokio::time::sleep_until(window.end.into()).await;
    let after = Counters::read(server_url, databases).await?;
    Ok(before.until(&after))
}

/// Runs `operation(worker, n)` in the shape of `shape` until the end of `window` and reports
/// the operations inside it (`true`: succeeded). Closed loop: `concurrency` workers call back
/// to back. Open loop (`rate`): operation k is due at k / rate seconds from the start, the
/// next free worker sends it then, and its latency counts from when it was due.
pub(super) async fn run_load<F, Fut>(
    shape: &Shape,
    window: Window,
    operation: F,
) -> anyhow::Result<Report>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let began = Instant::now();
    // Seconds between two due times.
    let interval = (shape.rate > 0).then(|| 1.0 / f64::from(shape.rate));
    let due = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(shape.concurrency);
    for worker in 0..shape.concurrency {
        let operation = operation.clone();
        let due = due.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            loop {
                let sent = match interval {
                    None => Instant::now(),
                    Some(interval) => {
                        let k = due.fetch_add(1, Ordering::Relaxed);
                        let at = began + Duration::from_secs_f64(k as f64 * interval);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                };
                if sent >= window.end {
                    break;
                }
                n += 1;
                let ok = operation(worker, n).await;
                let done = Instant::now();
                if window.holds(sent, done) {
                    if ok {
                        latencies_us.push((done - sent).as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut lat, err) = worker.await.context("bench worker")?;
        latencies_us.append(&mut lat);
        errors += err;
    }
    latencies_us.sort_unstable();
    Ok(Report::new(
        &latencies_us,
        errors,
        window.end - window.start,
    ))
}

/// Throughput and latency of one run.
#[derive(Debug)]
pub(super) struct Report {
    /// What one operation is, for the rate: `ops`, `payments`.
    pub(super) unit: &'static str,
    pub(super) ok: usize,
    pub(super) errors: u64,
    pub(super) per_second: f64,
    pub(super) p50_us: u64,
    pub(super) p90_us: u64,
    pub(super) p99_us: u64,
    pub(super) max_us: u64,
}

impl Report {
    pub(super) fn new(sorted_us: &[u64], errors: u64, duration: Duration) -> Report {
        let at = |q: f64| -> u64 {
            if sorted_us.is_empty() {
                return 0;
            }
            let index = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
            sorted_us[index - 1]
        };
        Report {
            unit: "ops",
            ok: sorted_us.len(),
            errors,
            per_second: sorted_us.len() as f64 / duration.as_secs_f64(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: sorted_us.last().copied().unwrap_or(0),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "  {:.0} {}/s  ok {}  errors {}  latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.per_second,
            self.unit,
            self.ok,
            self.errors,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles pick the nearest rank.
    #[test]
    fn percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        let report = Report::new(&sorted, 0, Duration::from_secs(2));
        assert_eq!(
            (report.p50_us, report.p90_us, report.p99_us, report.max_us),
            (50, 90, 99, 100)
        );
        assert_eq!(report.per_second, 50.0);
    }
}
