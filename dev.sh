#!/usr/bin/env bash
# Set-up and tasks on a fresh machine with only Python:
#   bash dev.sh demo     # install into .venv (first time), then run the embedded demo
#   bash dev.sh test     # install into .venv (first time), then run the test suite
#   bash dev.sh install  # only the install
#   bash dev.sh app      # the web app (http://127.0.0.1:7860) on the small base's one-step student,
#                        # outputs/demo/train/final; the first time, `varestorer demo` trains it (2-core CPU: ~10 min)
# VENV=path picks another virtual environment; PYTHON=python3.x another interpreter.
# APP_MODEL=DIR serves another model with `bash dev.sh app`; other arguments go to `varestorer app`.
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

app() {
  local model=${APP_MODEL:-outputs/demo/train/final}
  if [ -z "${APP_MODEL:-}" ] && [ ! -f "$model/varestorer_config.json" ]; then
    echo "dev.sh app: no trained student in $model yet; training it first with 'varestorer demo'"
    echo "  (distils the shipped small base and scores it: ~10 min on a 2-core CPU, once)"
    "$VENV/bin/varestorer" demo --output-dir outputs/demo
  fi
  exec "$VENV/bin/varestorer" app --model "$model" --caption none "$@"
}

cmd=${1:-help}; shift || true
case "$cmd" in
  install) install ;;
  demo) install; exec "$VENV/bin/varestorer" demo "$@" ;;
  test) install; exec "$VENV/bin/python" -m pytest "$@" ;;
  app) install; app "$@" ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
