#!/usr/bin/env bash
# One entry point for a fresh Debian machine: installs what vmferry needs, then runs the lab demo or the tests.
#   bash infra/bootstrap.sh demo    # start the built-in lab and run the main job on it
#   bash infra/bootstrap.sh test    # lint (ruff, import contracts) and run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
case "$mode" in
  demo|test) ;;
  *) echo "usage: bash infra/bootstrap.sh demo|test" >&2; exit 2 ;;
esac

bash infra/lab/install.sh

python=${VMFERRY_PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "vmferry needs Python 3.11 (found $("$python" --version 2>&1)); set VMFERRY_PYTHON" >&2
  exit 1
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  apt-get install -y -q --no-install-recommends python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# Reinstall only when the dependency list or the pinned versions changed: a warm machine starts in seconds.
# constraints.txt pins every package to the versions the tests passed with (SQLAlchemy 2.0.x among them).
stamp=.venv/.vmferry-deps-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e ".[dev]"
  rm -f .venv/.vmferry-deps-*
  touch "$stamp"
fi

case "$mode" in
  # The lab has no internet: Prefect's telemetry would only log failures.
  # On a fresh machine the ephemeral Prefect server's first start (every migration of a new database, while
  # Python compiles Prefect) took longer than Prefect's default 20 s wait, and the demo died before it began.
  demo)
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}" \
      exec .venv/bin/python -m infra.lab.demo
    ;;
  test)
    .venv/bin/ruff check .
    # The layers of docs/architecture.md ("Dependency rules"); the contracts are in pyproject.toml.
    .venv/bin/lint-imports --no-cache
    exec .venv/bin/python -m pytest -q
    ;;
esac
