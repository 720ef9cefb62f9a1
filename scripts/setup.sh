#!/usr/bin/env bash
# Installs system packages (Debian) and the project venv. Idempotent; make re-runs it only when pyproject changes.
# Usage: scripts/setup.sh PYTHON VENV "APT PACKAGES"
set -euo pipefail
py=${1:-python3}; venv=${2:-.venv}; pkgs=${3:-}
missing=()
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --disable-pip-version-check --upgrade pip 'setuptools>=77,<81' wheel
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$pip install -q --disable-pip-version-check torch==2.13.0
$pip install -q --disable-pip-version-check -e '.[runtime,train,triton,dev]'
# The tritonserver binary (CPU, Python backend) from the nvidia-pytriton wheel; --no-deps avoids its numpy<2 pin.
$pip install -q --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0
echo "setup: ready ($venv)"
