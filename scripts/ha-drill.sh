#!/usr/bin/env bash
# The HA drill (DESIGN section 14, docs/database.md "High availability",
# docs/runbooks/database-failover.md), end to end on a scratch pg_auto_failover formation of this
# machine:
#
#   1. pg_auto_failover from Debian's packages (postgresql-15-auto-failover), installed when
#      pg_autoctl is missing;
#   2. under a temporary directory, a monitor and two Postgres nodes on spare ports of 127.0.0.1
#      (trust authentication and no TLS: a scratch formation on loopback), in synchronous mode:
#      pg_auto_failover's default for two nodes, number_sync_standbys 0 with both nodes in the
#      replication quorum, which makes the primary wait for the standby at every commit
#      (synchronous_standby_names 'ANY 1 (...)', synchronous_commit on). Failure detection and
#      the promotion's wait are shortened so that a failover takes about 15 s, not about 50 s;
#   3. the two databases created on the primary, then `tandemctl chaos --ha` on the formation's
#      multi-host URLs (target_session_attrs=read-write): payments run, and part-way through the
#      drill's kill hook (this script, `--kill-primary`) kills the whole primary node with
#      kill -9: pg_autoctl, the postmaster and its backends. The vault and the orchestrator are
#      never restarted: they must find the new primary by themselves;
#   4. meanwhile the killed node is started again and rejoins as the standby;
#   5. tandemctl's checks (cli/src/chaos/ha.rs): every payment terminal and correct, nothing a
#      client saw acknowledged or read before the kill lost, the servers still the processes
#      that started.
#
# Usage: scripts/ha-drill.sh [ci | soak [PAYMENTS [KILLS]]]
#   ci    (the default) one failover during 200 payments: about a minute;
#   soak  KILLS failovers (3) during PAYMENTS payments (800), each once the node killed before
#         has rejoined, with 10 minutes for the payments to settle.
# Run from anywhere after `cargo build --workspace` (it runs ./target/debug/tandemctl, which
# starts the tandem-vault and tandem-orchestrator binaries beside it). As root, pg_autoctl and
# Postgres run as the postgres user (pg_autoctl refuses root); PGBIN says where the PostgreSQL
# programs are. Each step reports on an `ha drill: ...` line; tandemctl's last says what the
# failover cost and what was checked, and the drill exits 0, or it exits non-zero naming what
# failed. Everything it made (formation, processes, directories) is removed on exit, whatever
# the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPT="$PWD/scripts/ha-drill.sh"
TANDEMCTL="$PWD/target/debug/tandemctl"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
# Bounds on each wait, in seconds.
START_TIMEOUT_S=120
FORMATION_TIMEOUT_S=180
STOP_TIMEOUT_S=30
# The monitor's failure detection and promotion (pg_auto_failover's defaults in brackets): a
# node is checked every second [5 s] within 1 s [5 s], retried once [twice] after 0.5 s [2 s],
# and found unhealthy once it has not reported for 5 s [20 s]; the standby is promoted 8 s
# [30 s] after that, the time the old primary has to notice it is cut off and stop taking
# writes. Each keeper's network_partition_timeout (5 s [20 s]) must stay below that wait, so
# that a primary cut off from the monitor and the standby stops before the standby is
# promoted.
MONITOR_SETTINGS=(
  "pgautofailover.health_check_period=1000"
  "pgautofailover.health_check_timeout=1000"
  "pgautofailover.health_check_max_retries=1"
  "pgautofailover.health_check_retry_delay=500"
  "pgautofailover.node_considered_unhealthy_timeout=5000"
  "pgautofailover.primary_demote_timeout=8000"
)
NETWORK_PARTITION_TIMEOUT_S=5
# A killed node whose pg_rewind fails is rebuilt with pg_basebackup, which waits for a spread
# checkpoint on the primary: up to 0.9 x checkpoint_timeout, 4.5 min with the default 5 min.
# The nodes checkpoint every 30 s instead: a rejoin takes seconds, about half a minute when the
# node is rebuilt.
NODE_SETTINGS=("checkpoint_timeout='30s'")

say() { printf 'ha drill: %s\n' "$*"; }
fail() {
  printf 'ha drill: FAILED: %s\n' "$*" >&2
  exit 1
}

# One value from a query on database `$2` of the server on port `$1` of 127.0.0.1.
query() {
  "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d "$2" -c "$3"
}

# The formation's nodes as `name:reported/assigned` words, in node order (empty if the monitor
# does not answer).
node_states() {
  query "$(cat "$work/monitor.port")" pg_auto_failover \
    "SELECT string_agg(nodename || ':' || reportedstate || '/' || goalstate, ' ' ORDER BY nodeid)
     FROM pgautofailover.node" 2>/dev/null || true
}

# Waits until the nodes' states match the extended regular expression `$1`, at most `$2` s.
wait_states() {
  local deadline=$((SECONDS + $2)) states
  while :; do
    states="$(node_states)"
    if [[ "$states" =~ $1 ]]; then return 0; fi
    [ "$SECONDS" -lt "$deadline" ] || fail "the formation is [$states], not [$1], after $2 s"
    sleep 0.2
  done
}

# The processes of node `$1` (its pg_autoctl, the postmaster and every backend): its process
# group, started with setsid, and the postmaster's children (Postgres puts each in a session of
# its own).
node_pids() {
  local group postmaster
  group="$(cat "$work/$1.pgid" 2>/dev/null)" || return 0
  ps -eo pid=,pgid= | awk -v g="$group" '$2 == g { print $1 }'
  postmaster="$(head -n 1 "$work/pg/$1/postmaster.pid" 2>/dev/null)" || return 0
  ps -o pid= --ppid "$postmaster" 2>/dev/null | awk '{ print $1 }' || true
}

# The kill hook, run by tandemctl chaos: once the formation is whole (a primary and a
# synchronous standby: the previous kill's node has rejoined), kill -9 every process of the
# primary node, then tell the drill which node it was.
if [ "${1:-}" = "--kill-primary" ]; then
  work="$2"
  whole='node1:primary/primary node2:secondary/secondary'
  whole="^($whole|node1:secondary/secondary node2:primary/primary)\$"
  wait_states "$whole" "$FORMATION_TIMEOUT_S"
  primary="$(query "$(cat "$work/monitor.port")" pg_auto_failover \
    "SELECT nodename || ' ' || nodehost || ':' || nodeport FROM pgautofailover.node
     WHERE reportedstate = 'primary' AND goalstate = 'primary'")"
  read -r name address <<<"$primary"
  mapfile -t pids < <(node_pids "$name")
  [ "${#pids[@]}" -gt 0 ] || fail "no process of the primary node $name"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  # Gone once each has exited: a zombie waiting for its parent to reap it holds no socket.
  for _ in $(seq 1 50); do
    ps -o stat= -p "$(IFS=,; echo "${pids[*]}")" | grep -q '^[^Z]' || break
    sleep 0.1
  done
  echo "$name" >"$work/killed"
  say "killed the primary node $name ($address): kill -9 of its ${#pids[@]} processes"
  exit 0
fi

mode="${1:-ci}"
case "$mode" in
  ci) payments=200 kills=1 settle=180s ;;
  soak) payments="${2:-800}" kills="${3:-3}" settle=600s ;;
  *) fail "usage: scripts/ha-drill.sh [ci | soak [PAYMENTS [KILLS]]]" ;;
esac
started_s=$SECONDS

[ -x "$TANDEMCTL" ] || fail "$TANDEMCTL is missing: run cargo build --workspace first"
[ -x "$PGBIN/initdb" ] || fail "no PostgreSQL programs in $PGBIN (set PGBIN)"

# 1. pg_auto_failover, from Debian's packages.
if ! command -v pg_autoctl >/dev/null 2>&1; then
  say "installing pg_auto_failover (postgresql-15-auto-failover)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql-15-auto-failover >/dev/null
fi
say "$(pg_autoctl --version | sed -n 1p)"

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

work="$(mktemp -d -t tandem-ha-drill.XXXXXX)"
# The postgres user passes through to its own directory (it may not list this one).
chmod 711 "$work"
mkdir -p "$work/pg/xdg/config" "$work/pg/xdg/data" "$work/pg/xdg/run"
chmod 700 "$work/pg/xdg/run"
if [ "$(id -u)" = 0 ]; then chown -R postgres "$work/pg"; fi
# pg_autoctl, as the postgres user when run as root, with its configuration and state under the
# drill's directory (not the user's home).
autoctl_command=(
  env "HOME=$work/pg" "PATH=$PGBIN:/usr/bin:/bin" "XDG_CONFIG_HOME=$work/pg/xdg/config"
  "XDG_DATA_HOME=$work/pg/xdg/data" "XDG_RUNTIME_DIR=$work/pg/xdg/run" pg_autoctl
)
if [ "$(id -u)" = 0 ]; then
  autoctl_command=(
    setpriv --reuid=postgres --regid=postgres --init-groups -- "${autoctl_command[@]}"
  )
fi
autoctl() { "${autoctl_command[@]}" "$@"; }
chaos_pid=""
tail_pid=""
# The log of the step under way, shown if the drill fails.
step_log=""

# Stops node `$1` (pg_autoctl stops its Postgres on SIGTERM); kill -9 whatever is left after
# STOP_TIMEOUT_S.
stop_node() {
  local group pids deadline
  group="$(cat "$work/$1.pgid" 2>/dev/null)" || return 0
  kill -TERM -- "-$group" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT_S))
  while [ -f "$work/pg/$1/postmaster.pid" ] || kill -0 -- "-$group" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
  done
  mapfile -t pids < <(node_pids "$1")
  if [ "${#pids[@]}" -gt 0 ]; then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
}

cleanup() {
  local status=$?
  if [ -n "$chaos_pid" ] && kill -0 "$chaos_pid" 2>/dev/null; then
    # tandemctl and the servers it started share its process group.
    kill -KILL -- "-$chaos_pid" 2>/dev/null || true
    wait "$chaos_pid" 2>/dev/null || true
  fi
  for node in node1 node2 monitor; do stop_node "$node"; done
  if [ -n "$tail_pid" ]; then wait "$tail_pid" 2>/dev/null || true; fi
  if [ "$status" != 0 ] && [ -s "$step_log" ]; then
    printf -- '--- the last lines of %s:\n' "$(basename "$step_log")" >&2
    tail -n 30 "$step_log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs `pg_autoctl $@` for node `$1` in the background, in a process group of its own (setsid
# then execs the same process down to pg_autoctl, so that the whole node can be killed at once),
# logging to `$work/$1.log`.
run_node() {
  local node="$1"
  shift
  setsid "${autoctl_command[@]}" "$@" >>"$work/$node.log" 2>&1 &
  echo $! >"$work/$node.pgid"
  # The shell still reaps it, without a "Killed" notice when the drill kills it.
  disown $!
}

# 2. The formation: the monitor, then the first node (the primary), then the second (the
# standby).
read -r monitor_port port1 port2 <<<"$(spare_ports 3)"
echo "$monitor_port" >"$work/monitor.port"
step_log="$work/monitor.log"
run_node monitor create monitor --pgdata "$work/pg/monitor" --pgport "$monitor_port" \
  --hostname 127.0.0.1 --listen 127.0.0.1 --auth trust --no-ssl --run
deadline=$((SECONDS + START_TIMEOUT_S))
until query "$monitor_port" pg_auto_failover "SELECT 1 FROM pgautofailover.formation LIMIT 1" \
  >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || fail "the monitor did not start within $START_TIMEOUT_S s"
  sleep 0.2
done
for setting in "${MONITOR_SETTINGS[@]}"; do
  query "$monitor_port" pg_auto_failover "ALTER SYSTEM SET ${setting%%=*} = ${setting#*=}" \
    >/dev/null
done
query "$monitor_port" pg_auto_failover "SELECT pg_reload_conf()" >/dev/null
say "monitor on 127.0.0.1:$monitor_port: ${MONITOR_SETTINGS[*]}"
monitor_uri="postgres://autoctl_node@127.0.0.1:$monitor_port/pg_auto_failover?sslmode=prefer"

for node in node1 node2; do
  port="$port1"
  [ "$node" = node2 ] && port="$port2"
  step_log="$work/$node.log"
  autoctl create postgres --pgdata "$work/pg/$node" --pgport "$port" --hostname 127.0.0.1 \
    --listen 127.0.0.1 --name "$node" --monitor "$monitor_uri" --auth trust --no-ssl \
    >>"$work/$node.log" 2>&1 || fail "pg_autoctl create postgres for $node failed"
  autoctl config set --pgdata "$work/pg/$node" timeout.network_partition_timeout \
    "$NETWORK_PARTITION_TIMEOUT_S" >>"$work/$node.log" 2>&1
  run_node "$node" run --pgdata "$work/pg/$node"
  if [ "$node" = node1 ]; then
    wait_states '^node1:single/single$' "$FORMATION_TIMEOUT_S"
    deadline=$((SECONDS + START_TIMEOUT_S))
    until query "$port1" postgres "SELECT 1" >/dev/null 2>&1; do
      [ "$SECONDS" -lt "$deadline" ] || fail "node1 did not start within $START_TIMEOUT_S s"
      sleep 0.2
    done
    # Set on the first node; the second is a copy of it (pg_basebackup copies
    # postgresql.auto.conf), and so is a node rebuilt later.
    for setting in "${NODE_SETTINGS[@]}"; do
      query "$port1" postgres "ALTER SYSTEM SET ${setting%%=*} = ${setting#*=}" >/dev/null
    done
    query "$port1" postgres "SELECT pg_reload_conf()" >/dev/null
  fi
done
wait_states '^node1:primary/primary node2:secondary/secondary$' "$FORMATION_TIMEOUT_S"
step_log=""
formation_uri="$(autoctl show uri --pgdata "$work/pg/monitor" --formation default)"
sync_names="$(query "$port1" postgres "SHOW synchronous_standby_names")"
sync_commit="$(query "$port1" postgres "SHOW synchronous_commit")"
sync_state="$(query "$port1" postgres \
  "SELECT string_agg(sync_state, ',') FROM pg_stat_replication")"
standby_checkpoint="$(query "$port2" postgres "SHOW checkpoint_timeout")"
number_sync="$(query "$monitor_port" pg_auto_failover \
  "SELECT number_sync_standbys FROM pgautofailover.formation WHERE formationid = 'default'")"
[ -n "$sync_names" ] && [ "$sync_commit" = on ] && [[ "$sync_state" =~ ^(sync|quorum)$ ]] ||
  fail "the formation is not synchronous: synchronous_standby_names [$sync_names]," \
    "synchronous_commit $sync_commit, standby $sync_state"
say "formation up after $((SECONDS - started_s)) s: node1 primary on 127.0.0.1:$port1, node2" \
  "standby on 127.0.0.1:$port2; $formation_uri"
say "synchronous: number_sync_standbys $number_sync, synchronous_standby_names $sync_names," \
  "synchronous_commit $sync_commit, standby $sync_state; checkpoint_timeout $standby_checkpoint" \
  "on the standby too"

# 3. The databases, made on the primary (psql finds it through the multi-host URL), and the
# payments.
server_url="${formation_uri/:\/\//://postgres@}"
for database in tandem_vault tandem_orchestrator; do
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$server_url" -c "CREATE DATABASE $database"
done
vault_url="${server_url/\/postgres\?//tandem_vault?}"
orchestrator_url="${server_url/\/postgres\?//tandem_orchestrator?}"
say "tandemctl chaos --ha: $payments payments, $kills kill(s) of the primary"

step_log="$work/chaos.out"
# Made before tail follows it.
: >"$step_log"
# In a process group of its own, with the servers it starts: the cleanup stops them all at once.
setsid "$TANDEMCTL" chaos --ha --payments "$payments" --primary-kills "$kills" \
  --settle-timeout "$settle" \
  --vault-database-url "$vault_url" --orchestrator-database-url "$orchestrator_url" \
  --kill-primary-command "bash '$SCRIPT' --kill-primary '$work'" >>"$step_log" 2>&1 &
chaos_pid=$!
tail -n +1 -f --pid="$chaos_pid" "$work/chaos.out" &
tail_pid=$!

# 4. Each killed node, started again once the other has taken over, rejoins as the standby.
while kill -0 "$chaos_pid" 2>/dev/null; do
  if [ -f "$work/killed" ]; then
    node="$(cat "$work/killed")"
    rm -f "$work/killed"
    other=node1
    [ "$node" = node1 ] && other=node2
    took_over_s=$SECONDS
    wait_states "$other:(wait_primary|primary)/(wait_primary|primary)" "$FORMATION_TIMEOUT_S"
    restarted_s=$SECONDS
    run_node "$node" run --pgdata "$work/pg/$node"
    wait_states "$node:secondary/secondary" "$FORMATION_TIMEOUT_S"
    say "$other took over about $((restarted_s - took_over_s)) s after the kill (as the monitor" \
      "saw it); $node, started again, rejoined as the standby in $((SECONDS - restarted_s)) s"
  fi
  sleep 0.2
done
chaos_status=0
wait "$chaos_pid" || chaos_status=$?
chaos_pid=""
wait "$tail_pid" || true
tail_pid=""
[ "$chaos_status" = 0 ] || fail "tandemctl chaos --ha failed (exit $chaos_status)"
grep -q "^ha drill: [0-9]* payments, .*failover in " "$work/chaos.out" ||
  fail "tandemctl chaos --ha printed no result line"
step_log=""
say "formation at the end: $(node_states)"
say "took $((SECONDS - started_s)) s"
