#!/usr/bin/env bash
# Create .venv beside the checkout and install fedfms with its test tools.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is installed first and pinned: its CPU wheel lies on the CI machines; an unpinned
# torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
