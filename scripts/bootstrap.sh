#!/usr/bin/env bash
# Create .venv beside the checkout and install fedfms with its test tools.
# With --test, also install the real services the tests start on loopback (Debian packages:
# Orthanc with its DICOMweb plugin as the PACS, Chromium for the page checks) where apt-get can.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--test" ]]; then
  bash scripts/install_services.sh
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision from the package index, pinned together (pyproject.toml pins the same
# versions); on machines that keep these wheels on disk pip takes them from there.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
