//! tandemctl: the operator CLI for Tandem.
//!
//! - `tandemctl certs`: a CA plus one client identity per role and the servers' certificates,
//!   for a deployment.
//! - `tandemctl dev`: the whole stack in one process on the local Postgres, with dev
//!   certificates and a dev root key under `.tandem/dev/`.
//! - `tandemctl charge`: authorize, capture, void, refund and read charges on a running vault;
//!   read the sandbox acquirer's settlement report.
//! - `tandemctl keys`, `tandemctl audit`: the security team's key operations (init, unseal,
//!   seal, rotate, retire, rotate-root) and the audit log (list, verify).
//! - `tandemctl groups`: create, read, list, archive card groups on a running orchestrator;
//!   suspend and resume their members.
//! - `tandemctl pay`, `tandemctl payments`, `tandemctl refund`: pay an invoice from a card
//!   group, read, list and watch payments, note and refund them.
//! - `tandemctl ledger`: the ledger's balances, entries, spend reports and exports, and its
//!   invariant check on a database (`ledger check`).
//! - `tandemctl events`: the feed of every payment's and card group's events, followed live
//!   with `--follow`.
//! - `tandemctl recon`: reconcile the ledger with a processor's settlement day, list the
//!   discrepancies, propose adjustments and (as an approver) approve or reject them.
//! - `tandemctl webhooks`: create, list, show, update, rotate and delete webhook endpoints,
//!   list their deliveries and redeliver events; `listen` receives and verifies webhooks
//!   locally.
//! - `tandemctl fx`: set, read and list the exchange rates payments across currencies convert
//!   at.
//! - `tandemctl risk`: show a billing account's risk policy, set it from a TOML file.
//! - `tandemctl review`: list the payments risk holds for review; approve or reject one (as a
//!   reviewer, never the payment's creator).
//! - `tandemctl bench`: throughput and latency over real mTLS and Postgres.
//! - `tandemctl chaos`: kills the servers at random while paying, then verifies the money;
//!   `--ha`, the HA drill, kills the Postgres primary instead (`scripts/ha-drill.sh`).

// A CLI's output is its stdout.
#![allow(clippy::print_stdout)]

mod amounts;
mod bench;
mod certs;
mod chaos;
mod charge;
mod connect;
mod dev;
mod events;
mod fx;
mod groups;
mod keys;
mod ledger;
mod payments;
mod policy;
mod print;
mod process;
mod recon;
mod review;
mod risk;
mod webhooks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tandemctl",
    version,
    about = "Operate Tandem: certificates, the dev stack, charges, keys, audit, card groups, \
             payments, the ledger, events, reconciliation, webhooks, exchange rates, risk policies, \
             reviews, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a CA, one client identity per role and the servers' certificates.
    Certs(certs::CertsArgs),
    /// Run the whole stack locally with dev certificates and a dev root key.
    Dev(dev::DevArgs),
    /// Operate charges on a running vault.
    #[command(subcommand)]
    Charge(charge::ChargeCommand),
    /// Administer the vault's keys: init, status, unseal, seal, rotate, retire, rotate-root.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Read and verify the vault's audit log.
    #[command(subcommand)]
    Audit(keys::AuditCommand),
    /// Administer card groups on a running orchestrator.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// Pay an invoice from a card group.
    Pay(payments::PayArgs),
    /// Show, list, watch and note payments.
    #[command(subcommand)]
    Payments(payments::PaymentsCommand),
    /// Refund all or part of a payment.
    Refund(payments::RefundArgs),
    /// Read the ledger: balances, entries, spend reports, exports; check its invariants.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Read the feed of payment and card group events; `--follow` to keep reading.
    Events(events::EventsArgs),
    /// Reconcile the ledger with processors' settlement files and correct what does not match.
    #[command(subcommand)]
    Recon(recon::ReconCommand),
    /// Push events to the treasury's endpoints: register, change, rotate and inspect them;
    /// receive and verify webhooks locally with `listen`.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Set, read and list the exchange rates payments across currencies convert at.
    #[command(subcommand)]
    Fx(fx::FxCommand),
    /// Show and set billing accounts' risk policies.
    #[command(subcommand)]
    Risk(risk::RiskCommand),
    /// List the payments held for review; approve or reject them.
    #[command(subcommand)]
    Review(review::ReviewCommand),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Kill the servers at random while paying, then verify no money was lost or doubled
    /// (with --ha: kill the Postgres primary instead, and verify no committed write was lost).
    Chaos(chaos::ChaosArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(args) => certs::run(&args),
        Command::Dev(args) => dev::run(args).await,
        Command::Charge(command) => charge::run(command).await,
        Command::Keys(command) => keys::run(command).await,
        Command::Audit(command) => keys::run_audit(command).await,
        Command::Groups(command) => groups::run(command).await,
        Command::Pay(args) => payments::pay(args).await,
        Command::Payments(command) => payments::run(command).await,
        Command::Refund(args) => payments::refund(args).await,
        Command::Ledger(command) => ledger::run(command).await,
        Command::Events(args) => events::run(args).await,
        Command::Recon(command) => recon::run(command).await,
        Command::Webhooks(command) => webhooks::run(command).await,
        Command::Fx(command) => fx::run(command).await,
        Command::Risk(command) => risk::run(command).await,
        Command::Review(command) => review::run(command).await,
        Command::Bench(command) => bench::run(command).await,
        Command::Chaos(args) => chaos::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tandemctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::Cli;

    /// The command line is consistent: no clashing flags between flattened argument groups
    /// (clap checks this only when a command is parsed).
    #[test]
    fn command_line() {
        Cli::command().debug_assert();
    }

    /// `groups create` needs `--strategy` for the group's default policy; `pay` uses the
    /// group's default without one.
    #[test]
    fn strategy_required_only_for_groups() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("tandemctl").chain(args.iter().copied()))
        };
        let create = [
            "groups",
            "create",
            "--billing-account",
            "a",
            "--name",
            "n",
            "--member",
            "tok_a:A:1",
        ];
        assert!(parse(&create).is_err());
        assert!(parse(&[&create[..], &["--strategy", "sequential"]].concat()).is_ok());
        assert!(
            parse(&[
                "pay",
                "--group",
                "cg_1",
                "--invoice",
                "INV-1",
                "--amount",
                "1.00"
            ])
            .is_ok()
        );
    }
}
