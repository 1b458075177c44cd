#!/usr/bin/env bash
# Set-up and tasks on a fresh machine with only Python:
#   bash dev.sh demo     # install into .venv (first time), then run the embedded demo
#   bash dev.sh test     # install into .venv (first time), then run the test suite
#   bash dev.sh install  # only the install
# VENV=path picks another virtual environment; PYTHON=python3.x another interpreter.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.varestorer-installed"

install() {
  if [ -f "$stamp" ] && [ "$stamp" -nt setup.cfg ]; then return; fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
  # torch and torchvision from PyPI (the default build also runs on a CPU); then the package.
  "$VENV/bin/python" -m pip install --quiet torch torchvision
  "$VENV/bin/python" -m pip install --quiet -e ".[test]"
  touch "$stamp"
}

cmd=${1:-help}; shift || true
case "$cmd" in
  install) install ;;
  demo) install; exec "$VENV/bin/varestorer" demo "$@" ;;
  test) install; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
