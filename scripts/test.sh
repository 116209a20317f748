#!/usr/bin/env bash
# The whole test suite: Rust tests on SQLite and Postgres, plus the official OpenAI Python SDK
# against a running redial. Needs Postgres at TEST_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) and python3 with venv/pip for the SDK check.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/sdk-venv
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
fi
export REDIAL_TEST_PYTHON="$PWD/$venv/bin/python"
exec cargo test --workspace "$@"
