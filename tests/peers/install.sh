#!/usr/bin/env bash
# Installs the real peers the tests talk to on 127.0.0.1, when they are missing:
#   - Postfix's smtp-sink (Debian package postfix, with no mail system configured);
#   - npm's smpp package, for the SMSC script in this folder;
#   - Chromium (Debian package), the browser Playwright drives in tests/browser (the dashboard);
#   - wrk (Debian package), the load generator of bench/api_load.py (without it the benchmark
#     falls back to its own, costlier Python client).
# Safe to run again: each step checks first. Without root or apt, it says what it skipped,
# and the tests that need the peer skip with that reason (CI requires every peer).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v smtp-sink >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-sink ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing postfix (for smtp-sink), with no mail system configured"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null; }
  else
    echo "skipping postfix: needs root and apt-get (smtp-sink tests will skip)"
  fi
fi

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (the dashboard's browser tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
  else
    echo "skipping chromium: needs root and apt-get (browser tests will skip)"
  fi
fi

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing wrk (the API benchmark's load generator)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; }
  else
    echo "skipping wrk: needs root and apt-get (bench/api_load.py uses its Python client)"
  fi
fi

if command -v npm >/dev/null 2>&1; then
  if [ ! -d node_modules/smpp ]; then
    echo "installing npm smpp for the test SMSC"
    npm install --no-audit --no-fund --silent >/dev/null
  fi
else
  echo "skipping npm smpp: node and npm are not installed (SMPP tests will skip)"
fi
