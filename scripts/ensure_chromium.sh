#!/usr/bin/env bash
# Install Debian's chromium for the summary browser tests (tests/test_summary_browser.py),
# only when /usr/bin/chromium is missing. Needs root (CI runs it as root). Non-interactive.
# Playwright's own browser downloads are never used: the tests drive this system chromium.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "ensure_chromium: $CHROMIUM is missing and installing it needs root (apt-get install chromium)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# fonts-dejavu-core: a font with the symbols the summary uses (≤, ≥, ×, ✓, ✗).
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
