#!/usr/bin/env bash
# Scans the log lines the test suites wrote (the Rust suite's servers and the Python suite's
# stacks, under TANDEM_TEST_LOG_DIR) for the card numbers of tests/test-card-numbers.txt, in
# clear or spaced as people type them. Exits non-zero, naming the files, if any appears.
# Usage: scripts/scan-logs.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:?usage: scripts/scan-logs.sh DIR}"
patterns="$(mktemp)"
trap 'rm -f "$patterns"' EXIT
grep -v '^#' tests/test-card-numbers.txt | grep -v '^$' > "$patterns"
files=$(find "$dir" -type f | wc -l)
lines=$(find "$dir" -type f -exec cat {} + | wc -l)
if [ "$files" -eq 0 ] || [ "$lines" -eq 0 ]; then
  echo "scan-logs: no log lines under $dir: the suites wrote none, so nothing was checked" >&2
  exit 1
fi
# Digits only, so that "4242 4242 4242 4242" and "4242-4242-..." are caught too.
leaks=$(find "$dir" -type f -print0 |
  xargs -0 -n 64 sh -c 'for f; do tr -d " -" < "$f" | grep -Eq -f "$0" && echo "$f"; done; true' "$patterns")
if [ -n "$leaks" ]; then
  echo "scan-logs: test card numbers in these logs:" >&2
  echo "$leaks" >&2
  exit 1
fi
echo "scan-logs: $lines log lines in $files files, no test card number"
