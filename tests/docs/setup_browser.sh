#!/usr/bin/env bash
# The browser check's setup: Debian's chromium (headless), installed once; a no-op when already there.
set -euo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then echo "setup_browser: chromium missing; run as root or: apt-get install chromium" >&2; exit 1; fi
timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium >/dev/null
