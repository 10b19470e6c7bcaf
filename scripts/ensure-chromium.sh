#!/usr/bin/env bash
# Make sure Debian's headless Chromium is at /usr/bin/chromium (browser tests drive it with
# Playwright for Python; no browser is ever downloaded by a test tool). Idempotent and safe to
# run from several test sessions at once: the install runs under a lock and is skipped when
# the binary already exists. Without root it only says how to install it and exits 0 (the
# browser tests then skip locally and fail in CI); a failed install exits 1.
set -euo pipefail

BIN=/usr/bin/chromium
if [ -x "$BIN" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-chromium: $BIN is missing; install it with: sudo apt-get install -y chromium" >&2
    exit 0
fi
exec 9>/tmp/conveyor-ensure-chromium.lock
flock -w 900 9 || { echo "ensure-chromium: timed out waiting for another install" >&2; exit 1; }
if [ -x "$BIN" ]; then  # someone else installed it while we waited for the lock
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
# dpkg has its own lock; wait for it instead of failing when another apt run holds it.
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
if [ ! -x "$BIN" ]; then
    echo "ensure-chromium: apt-get ran but $BIN is still missing" >&2
    exit 1
fi
