#!/usr/bin/env bash
# Rebuilds the dashboard's script from the locked packages and fails if the result is not the
# committed dist/dashboard.js: the binary embeds that file, so it must be what the sources build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

npm ci --no-audit --no-fund --loglevel=error
npm run build --silent

if ! git diff --quiet --exit-code -- dist/dashboard.js; then
    git diff --stat -- dist/dashboard.js >&2
    echo "dashboard/web/dist/dashboard.js is not what its sources build." >&2
    echo "Run 'npm ci && npm run build' in dashboard/web and commit dist/dashboard.js." >&2
    exit 1
fi
echo "dashboard/web/dist/dashboard.js matches its sources"
