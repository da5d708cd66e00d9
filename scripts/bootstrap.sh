#!/usr/bin/env bash
# Create .venv beside the checkout and install fedfms with its test tools.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision from the package index, pinned together (pyproject.toml pins the same
# versions); on machines that keep these wheels on disk pip takes them from there.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
