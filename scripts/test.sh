#!/usr/bin/env bash
# Runs every test of Tandem on a fresh machine: starts Postgres if it is down, installs
# Prometheus and Chromium (Debian's packages) and the Python tools into .venv, checks the alert
# rules with promtool, checks the dashboard's committed script against a rebuild of
# dashboard/web, lints the protos with buf, checks the formatting and clippy's lints (warnings
# are errors), runs the Rust suite (unit, Postgres and end-to-end over mTLS), the Python client
# suite (which also drives the Node client, grpcurl, and the dashboard in headless Chromium
# through Playwright), scans both suites' logs for card numbers, a smoke run of
# `tandemctl dev --demo` (with its webhook receiver), the backup and restore drill, short runs of
# `tandemctl bench treasury`, `bench dashboard`, `bench recon` and `bench webhooks`, the fuzz
# targets (30 s each), the simulator (100,000 payments under seeded faults), the chaos harness
# (500 payments, 20+ kills; then 300 payments over two replicas of each server) and the HA drill
# (a pg_auto_failover formation from Debian's packages, its primary killed -9 during 200
# payments; the servers find the new primary by themselves).
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
step() { printf '\n== %s\n' "$*"; }
# Free space where the build and the databases live, printed at each step: a disk that fills
# up fails a build with "No space left on device", and this shows who took it.
disk() { df -h --output=avail,target . | tail -1 | awk '{print "disk: " $1 " free on " $2}'; }
# Each Rust and Python test makes its own database; they go once their suite is done.
drop_test_databases() {
  psql "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tandem_test_%'" |
    while read -r db; do psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done
}
# A fresh clone (CI) gains nothing from incremental compilation, which doubles target/.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

step "postgres"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
disk
# Databases left by earlier test runs.
drop_test_databases

step "prometheus (Debian's package: the metrics tests scrape with it, promtool checks the alerts)"
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
prometheus --version 2>&1 | head -1
promtool check rules ops/prometheus/alerts.yml

step "chromium (Debian's package: the dashboard's browser tests drive it)"
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
chromium --version 2>/dev/null | head -1

step "dashboard script (rebuilt from dashboard/web with npm; must equal the committed bundle)"
bash dashboard/web/check.sh

step "python tools (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt

step "buf lint"
(cd proto && ../.venv/bin/buf lint)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build"
cargo build --workspace --all-targets --locked

# Every test's server logs go here too; they are scanned for card numbers once both suites ran.
export TANDEM_TEST_LOG_DIR="$PWD/target/test-logs"
rm -rf "$TANDEM_TEST_LOG_DIR"

step "rust tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
drop_test_databases
disk

step "node client (npm ci)"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

step "python client suite"
PATH="$PWD/.venv/bin:$PATH" .venv/bin/pytest -q tests/python
drop_test_databases

step "scan the suites' logs for card numbers"
bash scripts/scan-logs.sh "$TANDEM_TEST_LOG_DIR"

step "tandemctl dev --demo"
dev_dir="$(mktemp -d)"
# Ports below the kernel's ephemeral range (32768-60999), which an outgoing connection of an
# earlier step may still hold.
TANDEM_VAULT__SERVER__LISTEN_ADDR="127.0.0.1:30151" \
  TANDEM_ORCHESTRATOR__SERVER__LISTEN_ADDR="127.0.0.1:30152" \
  TANDEM_DASHBOARD__SERVER__LISTEN_ADDR="127.0.0.1:30154" \
  ./target/debug/tandemctl dev --demo --exit --dir "$dev_dir" \
  --vault-database "tandem_test_dev_$$" \
  --orchestrator-database "tandem_test_dev_orchestrator_$$" \
  --webhook-listen 30153 | tee "$dev_dir/out.txt"
grep -q "corporate Visa" "$dev_dir/out.txt"
grep -q "captured, authorization code" "$dev_dir/out.txt"
grep -q "Invoice 12345 paid 20.50 USD" "$dev_dir/out.txt"
grep -q "^demo: 5 payments" "$dev_dir/out.txt"
# The receiver checked the signature of the demo's webhooks and printed them.
grep -q "^webhook  .*  payment.succeeded  *Invoice 12345 paid 20.50 USD" "$dev_dir/out.txt"
rm -rf "$dev_dir"

step "tandemctl bench treasury (short: 2,000 payments; the sitting in BENCHMARKS.md books 100,000)"
bench_out="$(mktemp)"
./target/debug/tandemctl bench treasury --payments 2000 --samples 5 --no-baseline | tee "$bench_out"
grep -q "^GetSpendReport over 2000 payments" "$bench_out"
grep -q "^ExportLedger (CSV, chunks of 10000): 12000 entries" "$bench_out"
rm -f "$bench_out"
for db in tandem_bench_vault tandem_bench_orchestrator; do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done

step "restore drill (a base backup of a stack with payments, restored into a fresh cluster, checked)"
bash scripts/restore-drill.sh | tee /tmp/tandem-restore-$$.txt
grep -q "^restore drill: backup of [0-9]* payments, .*ledger check ok; audit chain intact; a new payment's events follow the restored ones" \
  /tmp/tandem-restore-$$.txt
rm -f /tmp/tandem-restore-$$.txt

step "tandemctl bench dashboard (100,000 payments; the first page of /payments, timed at the server)"
bench_out="$(mktemp)"
./target/debug/tandemctl bench dashboard --payments 100000 --samples 5 --no-baseline | tee "$bench_out"
grep -q "^dashboard /payments first page over 100000 payments: at the server" "$bench_out"
rm -f "$bench_out"
for db in tandem_bench_vault tandem_bench_orchestrator; do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done

step "tandemctl bench recon (short: 2,000 records; the sitting in BENCHMARKS.md reconciles 100,000)"
bench_out="$(mktemp)"
./target/debug/tandemctl bench recon --payments 2000 --samples 2 --no-baseline | tee "$bench_out"
grep -q "^booked 2000 captures and their settlement records" "$bench_out"
grep -q "^RunReconciliation over 2000 records: min .* (2 runs)" "$bench_out"
rm -f "$bench_out"
for db in tandem_bench_vault tandem_bench_orchestrator; do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done

step "tandemctl bench webhooks (short: 200 payments, then 3 s at 20/s; BENCHMARKS.md has longer runs)"
bench_out="$(mktemp)"
./target/debug/tandemctl bench webhooks --payments 200 --rate 20 --duration 3s --warmup 1s \
  --no-baseline | tee "$bench_out"
grep -q "^  backlog: [0-9]* events of 200 payments (0 failed) delivered" "$bench_out"
grep -q "^  delivery lag .*, 0 not delivered within" "$bench_out"
grep -q "^  receiver: .*, 0 refused" "$bench_out"
rm -f "$bench_out"
for db in tandem_bench_vault tandem_bench_orchestrator; do
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done

step "fuzzing (each target 30 s on its committed corpus)"
disk
bash scripts/fuzz.sh 30
# The fuzz build (instrumented, release) is of no use to a fresh clone once it has run.
if [ "${CI:-}" = "true" ]; then rm -rf fuzz/target; fi
disk

step "simulation (100,000 payments of the real saga under seeded faults; docs/simulation.md)"
./target/debug/tandem-sim --seed 20261207 --payments 100000 | tee /tmp/tandem-sim-$$.txt
grep -q "^sim: 100000 payments, [0-9]* faults, .*every invariant held" /tmp/tandem-sim-$$.txt
rm -f /tmp/tandem-sim-$$.txt

step "tandemctl chaos (kill -9 the servers while paying, then verify the money)"
./target/debug/tandemctl chaos --payments 500 --kills-min 20 | tee /tmp/tandem-chaos-$$.txt
grep -q "^chaos: 500 payments, [0-9]* kills, 0 double charges, 0 lost captures, 0 orphan holds" \
  /tmp/tandem-chaos-$$.txt
rm -f /tmp/tandem-chaos-$$.txt

step "tandemctl chaos --replicas 2 (two vaults and two orchestrators on the same databases, any killed)"
./target/debug/tandemctl chaos --payments 300 --kills-min 12 --replicas 2 | tee /tmp/tandem-chaos-$$.txt
grep -q "^chaos: 300 payments, [0-9]* kills across 2 replicas of each server, 0 double charges, 0 lost captures, 0 orphan holds, .*audit chain intact" \
  /tmp/tandem-chaos-$$.txt
rm -f /tmp/tandem-chaos-$$.txt

step "HA drill (pg_auto_failover, synchronous: kill -9 the Postgres primary while paying; the servers follow the new primary)"
bash scripts/ha-drill.sh ci | tee /tmp/tandem-ha-$$.txt
grep -q "^ha drill: 200 payments, failover in [0-9.]* s (writes resumed after [0-9.]* s), [0-9]* in flight at the kill, 0 lost, 0 double charges, 0 orphan holds, ledger check ok, audit chain intact over [0-9]* events, services not restarted" \
  /tmp/tandem-ha-$$.txt
rm -f /tmp/tandem-ha-$$.txt

printf '\nall tests passed\n'
