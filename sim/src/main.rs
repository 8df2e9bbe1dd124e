//! `tandem-sim`: simulates payments under seeded faults and checks every invariant after every
//! step (see the library's docs). Prints the seed; a failure prints the shortest schedule that
//! shows it and the command that replays it.
//!
//! ```text
//! tandem-sim [--seed S] [--payments N] [--first K] [--fault-percent P]
//! tandem-sim --seed S --payment K      # replay one payment, printing its schedule
//! ```

use std::process::ExitCode;
use std::time::Instant;

use tandem_sim::{Failure, run, run_payment, shrink};

struct Args {
    seed: u64,
    payments: u64,
    first: u64,
    one: Option<u64>,
    percent: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        payments: 100_000,
        first: 0,
        one: None,
        percent: 8,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            words
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} takes a whole number"))
        };
        match word.as_str() {
            "--seed" => args.seed = value("--seed")?,
            "--payments" => args.payments = value("--payments")?,
            "--first" => args.first = value("--first")?,
            "--payment" => args.one = Some(value("--payment")?),
            "--fault-percent" => {
                args.percent = value("--fault-percent")?;
                if args.percent > 100 {
                    return Err("--fault-percent is 0 to 100".into());
                }
            }
            "--help" | "-h" => {
                return Err("usage: tandem-sim [--seed S] [--payments N] [--first K] \
                            [--fault-percent P] | --seed S --payment K"
                    .into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[allow(clippy::print_stdout)]
fn report_failure(args: &Args, failure: &Failure) {
    let shortest = shrink(args.seed, args.percent, failure);
    println!(
        "sim: FAILED at payment {} round {}: {}",
        failure.payment, shortest.round, shortest.what
    );
    println!(
        "shortest schedule ({} of {} faults):",
        shortest.schedule.len(),
        failure.schedule.len()
    );
    for injected in &shortest.schedule {
        println!(
            "  round {:>3}  fault #{:<3} {:?}",
            injected.round, injected.index, injected.fault
        );
    }
    println!(
        "replay: tandem-sim --seed {} --payment {} --fault-percent {}",
        args.seed, failure.payment, args.percent
    );
}

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("{problem}");
            return ExitCode::from(2);
        }
    };
    println!("sim: seed {}", args.seed);
    if let Some(index) = args.one {
        return match run_payment(args.seed, index, args.percent, &Default::default()) {
            Ok(ended) => {
                println!("sim: payment {index} ended {ended:?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                report_failure(&args, &failure);
                ExitCode::FAILURE
            }
        };
    }
    let started = Instant::now();
    match run(args.seed, args.first, args.payments, args.percent) {
        Ok(report) => {
            println!(
                "sim: {} payments, {} faults, {} succeeded, {} partially paid, {} failed, {} \
                 operator resolutions, {} refunds, {} converted legs, every invariant held, in \
                 {:.1} s",
                report.payments,
                report.faults,
                report.ended[0],
                report.ended[1],
                report.ended[2],
                report.resolutions,
                report.refunds,
                report.converted,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            report_failure(&args, &failure);
            ExitCode::FAILURE
        }
    }
}
