#!/usr/bin/env bash
# The restore drill (DESIGN section 14, docs/runbooks/restore-from-backup.md), end to end on
# scratch clusters of this machine's PostgreSQL:
#
#   1. a source cluster (initdb) on a spare port of 127.0.0.1, and `tandemctl dev --demo` on it:
#      cards, payments, ledger transfers, events and the vault's audit chain;
#   2. what it holds: row counts, `tandemctl ledger check`, the audit chain's head;
#   3. a base backup (pg_basebackup, WAL streamed), then the disaster: the source cluster is
#      stopped and deleted;
#   4. the backup restored into a fresh data directory, started on another port;
#   5. the same counts, the same `ledger check`, the same audit head and the runbook's feed-key
#      check; then Tandem started on the restored databases: the audit chain verifies through
#      the vault, and a new payment's events follow the restored ones in the event feed (the
#      hazard a restore from a logical dump has: the feed is ordered by transaction id).
#
# Run from anywhere after `cargo build -p tandemctl` (it runs ./target/debug/tandemctl); as
# root the PostgreSQL programs run as the postgres user. PGBIN overrides where they are.
# Each step reports on a `restore drill: ...` line; the last says what was restored and
# checked, and the drill exits 0, or it exits non-zero naming what differed.
# Everything it made (clusters, backup, dev directory) is removed on exit, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

TANDEMCTL="$PWD/target/debug/tandemctl"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
# Bounds on each wait, in seconds.
START_TIMEOUT_S=60
FEED_TIMEOUT_S=20

started_s=$SECONDS
say() { printf 'restore drill: %s\n' "$*"; }
fail() {
  printf 'restore drill: FAILED: %s\n' "$*" >&2
  exit 1
}

[ -x "$TANDEMCTL" ] || fail "$TANDEMCTL is missing: run cargo build -p tandemctl first"
[ -x "$PGBIN/initdb" ] || fail "no PostgreSQL programs in $PGBIN (set PGBIN)"

# The PostgreSQL programs refuse to run as root: as root they run as the postgres user.
if [ "$(id -u)" = 0 ]; then
  pg() { runuser -u postgres -- "$PGBIN/$1" "${@:2}"; }
else
  pg() { "$PGBIN/$1" "${@:2}"; }
fi

# Ports of 127.0.0.1 free at this moment, all different.
spare_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

work="$(mktemp -d -t tandem-restore-drill.XXXXXX)"
# The postgres user passes through to its own directory (it may not list this one).
chmod 711 "$work"
mkdir "$work/pg" "$work/dev"
if [ "$(id -u)" = 0 ]; then chown postgres "$work/pg"; fi
source_data="$work/pg/source"
backup="$work/pg/backup"
restored_data="$work/pg/restored"
dev_pid=""
# The log of the step under way, shown if the drill fails.
step_log=""

cleanup() {
  local status=$?
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -INT "$dev_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$dev_pid" 2>/dev/null || true
  fi
  for data in "$source_data" "$restored_data"; do
    if [ -f "$data/postmaster.pid" ]; then
      pg pg_ctl -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
  done
  if [ "$status" != 0 ] && [ -s "$step_log" ]; then
    printf -- '--- the last lines of %s:\n' "$(basename "$step_log")" >&2
    tail -n 30 "$step_log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts the cluster in `$1` on port `$2`, on 127.0.0.1 only, logging to `$3`.
start_cluster() {
  pg pg_ctl -D "$1" -l "$3" -w -t "$START_TIMEOUT_S" \
    -o "-p $2 -k $work/pg -c listen_addresses=127.0.0.1" start >/dev/null
}

# One value from a query on database `$2` of the cluster on port `$1`.
query() {
  "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d "$2" -c "$3"
}

# What the drill compares before and after: the rows of each kind, and the audit chain's head.
inventory() {
  printf 'payments %s\n' "$(query "$1" tandem_orchestrator 'SELECT count(*) FROM payments')"
  printf 'ledger_transfers %s\n' \
    "$(query "$1" tandem_orchestrator 'SELECT count(*) FROM ledger_transfers')"
  printf 'payment_events %s\n' \
    "$(query "$1" tandem_orchestrator 'SELECT count(*) FROM payment_events')"
  printf 'audit_events %s\n' "$(query "$1" tandem_vault 'SELECT count(*) FROM audit_events')"
  printf 'audit_head %s\n' \
    "$(query "$1" tandem_vault "SELECT seq || ' ' || encode(hash, 'hex') FROM audit_head")"
}

# The dev stack's environment: the server at port `$1`, listeners on the ports after it.
dev_env() {
  printf '%s\n' \
    "DATABASE_URL=postgres://postgres@127.0.0.1:$1/postgres" \
    "TANDEM_VAULT__SERVER__LISTEN_ADDR=127.0.0.1:$2" \
    "TANDEM_ORCHESTRATOR__SERVER__LISTEN_ADDR=127.0.0.1:$3" \
    "TANDEM_DASHBOARD__SERVER__LISTEN_ADDR=127.0.0.1:$4" \
    "TANDEM_VAULT__METRICS__LISTEN_ADDR=127.0.0.1:$5" \
    "TANDEM_ORCHESTRATOR__METRICS__LISTEN_ADDR=127.0.0.1:$6"
}

# 1. The source cluster, and Tandem's demo on it.
read -r source_port restored_port <<<"$(spare_ports 2)"
step_log="$work/pg/source.log"
pg initdb -D "$source_data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
# The event feed is keyed by 64-bit transaction ids. A fresh cluster's are lower than those a
# restore itself uses up, which would hide the hazard of a restore that numbers transactions
# from the start (a dump loaded into a fresh cluster). The source starts in epoch 1, far above
# any id a fresh cluster hands out, as a cluster that has served for long is.
pg pg_resetwal --epoch 1 -D "$source_data" >/dev/null
start_cluster "$source_data" "$source_port" "$work/pg/source.log"
say "source cluster on 127.0.0.1:$source_port"

read -r -a ports <<<"$(spare_ports 5)"
mapfile -t env_first < <(dev_env "$source_port" "${ports[@]}")
step_log="$work/dev-demo.out"
env "${env_first[@]}" "$TANDEMCTL" dev --demo --exit --dir "$work/dev" >"$work/dev-demo.out" 2>&1 ||
  fail "tandemctl dev --demo on the source cluster failed"
grep -q "^demo: 5 payments" "$work/dev-demo.out" || fail "the demo did not pay its 5 payments"
group="$(sed -n 's/^or: tandemctl pay --group \([^ ]*\) .*/\1/p' "$work/dev-demo.out" | head -n 1)"
[ -n "$group" ] || fail "tandemctl dev printed no GlobalOps group id"

# 2. What the source holds.
step_log=""
before="$(inventory "$source_port")"
source_url="postgres://postgres@127.0.0.1:$source_port/tandem_orchestrator"
ledger_before="$("$TANDEMCTL" ledger check --database-url "$source_url")" ||
  fail "ledger check on the source cluster: $ledger_before"
count() { sed -n "s/^$1 //p" <<<"$2"; }
payments="$(count payments "$before")"
transfers="$(count ledger_transfers "$before")"
events="$(count payment_events "$before")"
audit_events="$(count audit_events "$before")"
read -r head_seq head_hash <<<"$(count audit_head "$before")"
if [ "$payments" -lt 5 ] || [ "$transfers" -eq 0 ] || [ "$events" -eq 0 ] || [ "$head_seq" -eq 0 ]; then
  fail "the source holds too little to restore: $(tr '\n' ' ' <<<"$before")"
fi
say "source holds $payments payments, $transfers ledger transfers, $events events," \
  "$audit_events audit events (head $head_seq)"

# 3. The base backup, then the disaster.
pg pg_basebackup -h 127.0.0.1 -p "$source_port" -U postgres -D "$backup" -Fp -Xstream -c fast
pg pg_verifybackup -q "$backup" || fail "pg_verifybackup refuses the backup"
pg pg_ctl -D "$source_data" -m fast -w stop >/dev/null
rm -rf "$source_data"
say "base backup taken and verified; source cluster stopped and deleted"

# 4. The restore: the backup copied into a fresh data directory, started on another port.
# As root, cp -a keeps the postgres user's ownership and the data directory's mode 0700.
cp -a "$backup" "$restored_data"
step_log="$work/pg/restored.log"
start_cluster "$restored_data" "$restored_port" "$work/pg/restored.log"
say "backup restored on 127.0.0.1:$restored_port"
step_log=""

# 5. The checks on the restored databases, before any service starts on them.
after="$(inventory "$restored_port")"
[ "$after" = "$before" ] ||
  fail "the restore differs from the source:" \
    "$(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | tr '\n' ' ')"
restored_url="postgres://postgres@127.0.0.1:$restored_port/tandem_orchestrator"
ledger_after="$("$TANDEMCTL" ledger check --database-url "$restored_url")" ||
  fail "ledger check on the restore: $ledger_after"
[ "$ledger_after" = "$ledger_before" ] ||
  fail "ledger check differs: before [$ledger_before] after [$ledger_after]"
# The runbook's check before the orchestrator starts: the next transaction id is above every
# stored feed key, so new events sort after the restored ones.
feed_ok="$(query "$restored_port" tandem_orchestrator \
  "SELECT pg_snapshot_xmax(pg_current_snapshot()) > greatest(
     (SELECT max(feed_key) FROM payment_events),
     (SELECT max(feed_key) FROM card_group_events),
     (SELECT max(feed_key) FROM reconciliation_events),
     (SELECT max(feed_key) FROM webhook_fanout))")"
[ "$feed_ok" = t ] || fail "the restored cluster's next transaction id is not above the feed keys"
say "counts, ledger check and audit head match the source; feed keys below the next transaction id"
mapfile -t ledger_lines <<<"$ledger_after"
printf '  %s\n' "${ledger_lines[@]}"

# Tandem on the restored databases, serving until interrupted.
read -r -a ports <<<"$(spare_ports 5)"
mapfile -t env_restored < <(dev_env "$restored_port" "${ports[@]}")
vault_uri="https://127.0.0.1:${ports[0]}"
orchestrator_uri="https://127.0.0.1:${ports[1]}"
step_log="$work/dev-restored.out"
: >"$step_log"
env "${env_restored[@]}" "$TANDEMCTL" dev --dir "$work/dev" >"$work/dev-restored.out" 2>&1 &
dev_pid=$!
deadline=$((SECONDS + START_TIMEOUT_S))
until grep -q "serving; press Ctrl-C to stop" "$work/dev-restored.out"; do
  kill -0 "$dev_pid" 2>/dev/null || fail "tandemctl dev on the restored cluster exited"
  [ "$SECONDS" -lt "$deadline" ] ||
    fail "tandemctl dev on the restored cluster not serving within $START_TIMEOUT_S s"
  sleep 0.2
done

# The audit chain, through the vault: intact, and still holding the head the backup had.
verify="$("$TANDEMCTL" audit verify --vault "$vault_uri" --certs "$work/dev" --as-auditor 2>&1)" ||
  fail "tandemctl audit verify: $verify"
case "$verify" in intact:*) ;; *) fail "tandemctl audit verify: $verify" ;; esac
hash_at_head="$(query "$restored_port" tandem_vault \
  "SELECT encode(hash, 'hex') FROM audit_events WHERE seq = $head_seq")"
[ "$hash_at_head" = "$head_hash" ] ||
  fail "audit event $head_seq is no longer the head the backup had ($hash_at_head, not $head_hash)"
say "audit chain $verify"

# A new payment, then the feed: it lists every restored event, and the new payment's after them.
request_id="restore-drill-$$"
pay_out="$("$TANDEMCTL" pay --orchestrator "$orchestrator_uri" --certs "$work/dev" --group "$group" \
  --invoice "DRILL-$$" --amount 20.50 --request-id "$request_id" 2>&1)" ||
  fail "tandemctl pay on the restored stack: $pay_out"
read -r new_payment new_state <<<"$(query "$restored_port" tandem_orchestrator \
  "SELECT id || ' ' || state FROM payments WHERE request_id = '$request_id'")"
[ -n "$new_payment" ] || fail "the new payment is not in the restored database"
# Succeeded: the restored vault opens the restored cards with the restored keys.
[ "$new_state" = succeeded ] || fail "the new payment $new_payment is $new_state: $pay_out"
new_events="$(query "$restored_port" tandem_orchestrator \
  "SELECT count(*) FROM payment_events WHERE payment_id = '$new_payment'")"
feed_order() {
  "$TANDEMCTL" events --orchestrator "$orchestrator_uri" --certs "$work/dev" --format json 2>/dev/null |
    python3 -c '
import json, sys
new = sys.argv[1]
payments = [json.loads(line).get("payment_id", "") for line in sys.stdin if line.strip()]
positions = [i for i, payment in enumerate(payments) if payment == new]
restored = [i for i, payment in enumerate(payments) if payment and payment != new]
follows = bool(positions) and (not restored or max(restored) < min(positions))
print(len(restored), len(positions), "follows" if follows else "interleaved")
' "$new_payment"
}
deadline=$((SECONDS + FEED_TIMEOUT_S))
while :; do
  read -r feed_restored feed_new feed_verdict <<<"$(feed_order)" || true
  [ "${feed_new:-0}" -ge "$new_events" ] && break
  [ "$SECONDS" -lt "$deadline" ] ||
    fail "the feed lists ${feed_new:-0} of the new payment's $new_events events after" \
      "$FEED_TIMEOUT_S s (feed keys are transaction ids: see the runbook)"
  sleep 0.5
done
[ "$feed_restored" = "$events" ] ||
  fail "the feed lists $feed_restored of the $events restored payment events (feed keys are" \
    "transaction ids: see the runbook)"
[ "$feed_verdict" = follows ] ||
  fail "the new payment's events are not after the restored ones in the feed"
say "new payment $new_payment ($new_state): its $new_events events follow the $events" \
  "restored ones in the feed"

kill -INT "$dev_pid"
wait "$dev_pid" || fail "tandemctl dev on the restored cluster did not stop cleanly"
dev_pid=""

say "backup of $payments payments, $transfers ledger transfers, $events events," \
  "$audit_events audit events restored; ledger check ok; audit chain intact;" \
  "a new payment's events follow the restored ones"
say "took $((SECONDS - started_s)) s"
