#!/usr/bin/env bash
# One command from a fresh clone to a running stack: creates .venv (unless a virtualenv is
# active), installs, creates TRADING_HOME (default ~/.asx-trading) and its databases, starts the
# manager and every service, and waits until all are healthy. Arguments are passed to
# `tradingctl start` (e.g. service names).
set -euo pipefail
cd "$(dirname "$0")"

python3 setup_microservices.py --full

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    bin="$VIRTUAL_ENV/bin"
else
    bin="$PWD/.venv/bin"
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
