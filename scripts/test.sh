#!/usr/bin/env bash
# The whole test suite: Rust tests on SQLite and Postgres, plus the official OpenAI Python SDK
# against a running redial. Needs Postgres at TEST_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) and python3 with venv/pip for the SDK check.
#
# A plain `cargo test` runs only what needs neither: the Postgres and SDK tests carry
# `#[ignore = "needs ...: run scripts/test.sh"]`, and this script runs them with
# `--include-ignored`. Arguments go to `cargo test` (`scripts/test.sh --test api chat`,
# `scripts/test.sh -- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/sdk-venv
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
fi
export REDIAL_TEST_PYTHON="$PWD/$venv/bin/python"
for arg in "$@"; do
  # Test-binary arguments given after `--`: add ours to them.
  [[ $arg == -- ]] && exec cargo test --workspace "$@" --include-ignored
done
exec cargo test --workspace "$@" -- --include-ignored
