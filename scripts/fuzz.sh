#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for the given number of seconds each (default 30) on its
# committed corpus, with libFuzzer through cargo-fuzz, and prints the executions per target.
# Installs cargo-fuzz if it is missing. A crash fails the script and leaves the input under
# fuzz/artifacts/<target>/. New inputs go to a scratch directory, so a run leaves the committed
# corpus as it is (libFuzzer adds to and prunes the first corpus directory it is given).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-30}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
# Without a sanitizer, cargo-fuzz's instrumentation (sancov passes, --cfg fuzzing) builds on the
# stable toolchain; Rust's own checks (bounds, overflow in debug assertions) find the panics.
targets=(card_input money_policy requests)
cargo fuzz build --sanitizer none
for target in "${targets[@]}"; do
  log="$(mktemp)"
  scratch="$(mktemp -d)"
  cargo fuzz run --sanitizer none "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=2048 -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1 || {
    tail -40 "$log"
    echo "fuzz: $target failed"
    exit 1
  }
  executions="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
  echo "fuzz: $target $executions executions in ${seconds}s"
  rm -rf "$log" "$scratch"
done
