#!/usr/bin/env bash
# The services the tests start on loopback, from Debian's packages: Orthanc and its DICOMweb
# plugin (the PACS of tests/dicom), Chromium and ChromeDriver (the MLflow page check).
# Without apt-get or root, say so: those tests then skip and name what is missing.
set -euo pipefail
PACKAGES=(orthanc orthanc-dicomweb chromium chromium-driver)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install_services: no apt-get here; the tests that need ${missing[*]} will skip" >&2
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "install_services: not root and no sudo; the tests that need ${missing[*]} will skip" >&2
    exit 0
  fi
  SUDO="sudo"
fi
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "install_services: apt-get could not install ${missing[*]}; the tests that need them will skip" >&2
  exit 0
fi
# Debian starts Orthanc as a system service on port 8042 after installing it; the tests start
# their own on free loopback ports, so the system one is stopped where it runs.
if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
  $SUDO systemctl stop orthanc || true
fi
