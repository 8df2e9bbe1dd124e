#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md on a release build, one after another, each with its
# pgbench baselines measured in the same invocation, and writes what they print to
# bench-results.txt (and the terminal).
#
#   bash scripts/bench.sh            # 30 s per benchmark, 10 s per baseline
#   DURATION=10s bash scripts/bench.sh
#
# Needs the local Postgres of the README (DATABASE_URL for another) and pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
duration="${DURATION:-30s}"
baseline="${BASELINE_DURATION:-10s}"
out="${OUT:-bench-results.txt}"

cargo build --release --locked -p tandemctl -p tandem-vault -p tandem-orchestrator
bench() { ./target/release/tandemctl bench "$@" --duration "$duration" --baseline-duration "$baseline"; }

{
  printf '# %s, %s cores, %s\n' "$(date -u +%FT%TZ)" "$(nproc)" \
    "$(psql "$DATABASE_URL" -Atc 'SHOW server_version')"
  bench tokenize --concurrency 64
  bench ledger --accounts 50 --concurrency 20
  # Hot accounts: the same accounts picked by a Zipf law, offered a fixed rate (LEDGER_RATE,
  # below what the uniform run served) in an open loop with room for 64 in flight.
  bench ledger --accounts 50 --concurrency 64 --skew zipf --rate "${LEDGER_RATE:-5000}"
  bench charge --concurrency 64
  bench pay --cards 3 --strategy parallel --groups 64 --concurrency 64
  bench pay --cards 3 --strategy weighted --groups 64 --concurrency 64
  # Every payment on the same three cards and billing account: the hottest rows there are.
  bench pay --cards 3 --strategy parallel --groups 1 --concurrency 64
  # Latency at a fixed load, about half of what the first pay run reached (PAY_RATE).
  bench pay --cards 3 --strategy parallel --groups 64 --concurrency 64 --rate "${PAY_RATE:-30}"
  # One payer floods, another pays 10/s: its p99 beside the flood against alone.
  bench flood --rate 10 --concurrency 64 --no-baseline
  # 2,000 WatchPayment streams beside a payer paying 10/s.
  bench watch --streams 2000 --rate 10 --no-baseline
  # GetSpendReport over a billing account with 100,000 three-card payments; ExportLedger of them.
  bench treasury --payments 100000 --cards 3 --no-baseline
  # RunReconciliation of a day of 100,000 settlement records, each matching a ledger capture.
  bench recon --payments 100000 --no-baseline
  # Webhooks: the events of 200 payments delivered as a backlog, then their lag behind the
  # commits at 40 payments/s (WEBHOOK_PAY_RATE).
  bench webhooks --payments 200 --rate "${WEBHOOK_PAY_RATE:-40}" --no-baseline
  # Risk: what an assessment under every rule kind adds to a payment's latency at half load.
  bench risk --cards 3 --groups 32 --windows 3 --duration 20s --no-baseline
} 2>&1 | tee "$out"
