#!/usr/bin/env bash
# Headless Chromium and its matching chromedriver from Debian's packages, for the HTML report's browser
# test. Idempotent: does nothing when /usr/bin/chromium is already there. Runs as root (CI does).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
