#!/usr/bin/env bash
# One command from a fresh clone to a running stack: creates .venv (unless a virtualenv is
# active), installs, creates TRADING_HOME (default ~/.asx-trading) and its databases, starts the
# manager and every service, and waits until all are healthy. Arguments are passed to
# `tradingctl start` (e.g. service names). `--demo [ARGS]` instead runs the whole stack offline on
# a generated market labelled SYNTHETIC, at an accelerated clock (`tradingctl demo [ARGS]`).
set -euo pipefail
cd "$(dirname "$0")"

python3 setup_microservices.py --full

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    bin="$VIRTUAL_ENV/bin"
else
    bin="$PWD/.venv/bin"
fi

if [[ "${1:-}" == "--demo" ]]; then
    shift
    exec "$bin/tradingctl" demo "$@"
fi

status=0
"$bin/tradingctl" start "$@" || status=$?

cat <<HELP

  dashboard:  $bin/tradingctl dashboard
  status:     $bin/tradingctl status
  logs:       $bin/tradingctl logs -f
  stop:       $bin/tradingctl stop
HELP
exit "$status"
