#!/usr/bin/env bash
# Property-based fuzzing of the admin API against its OpenAPI document (docs/admin-openapi.json)
# with schemathesis: a running redial (debug build, a fresh SQLite database) with a few calls
# stored, every operation exercised with generated valid and invalid input. Fails on any 5xx and
# on any response the document does not allow (status, content type, headers, body schema).
#
#   scripts/fuzz-admin.sh                # the short CI run (30 s of fuzzing)
#   FUZZ_MAX_EXAMPLES=500 scripts/fuzz-admin.sh
#
# schemathesis is installed from PyPI into target/fuzz-venv (python3 with venv and pip needed).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/fuzz-venv
schemathesis_version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

cargo build --quiet --bin redial
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
admin_key=fuzz-admin-key
cat > "$work/redial.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
api_keys = ["fuzz-platform-key"]
admin_keys = ["fuzz:$admin_key"]
erasure_key = "fuzz-erasure-key"

[database]
url = "sqlite://$work/redial.db"
journal_dir = "$work/journal"

[upstream]
# Nothing listens here: each turn ends in the spoken apology and is stored all the same.
base_url = "http://127.0.0.1:9/v1"
api_key = "none"
connect_timeout_ms = 200
TOML

RUST_LOG=warn target/debug/redial --config "$work/redial.toml" serve >"$work/redial.log" 2>&1 &
redial=$!
cleanup() { kill "$redial" 2>/dev/null || true; wait "$redial" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -fs "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# A few calls, so that generated ids sometimes meet stored ones.
for i in 1 2 3; do
  curl -s -o /dev/null "$base/v1/chat/completions" -H "authorization: Bearer fuzz-platform-key" \
    -H 'content-type: application/json' -d "{\"model\":\"m\",\"stream\":true,
      \"messages\":[{\"role\":\"user\",\"content\":\"hello $i\"}],
      \"call\":{\"id\":\"fuzz-call-$i\",\"assistantId\":\"a\",\"customer\":{\"number\":\"+1415555010$i\"}}}"
done

status=0
# schemathesis keeps a cache in the working directory: run it from the scratch directory.
schema="$PWD/docs/admin-openapi.json"
schemathesis="$PWD/$venv/bin/schemathesis"
(cd "$work" && exec "$schemathesis" run "$schema" \
  --url "$base" \
  --header "Authorization: Bearer $admin_key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "${FUZZ_MAX_EXAMPLES:-40}" \
  --max-time "${FUZZ_MAX_TIME:-30}" \
  --workers 2 \
  --seed "${FUZZ_SEED:-14}" \
  --generation-database none \
  --no-color) || status=$?
if [ "$status" -ne 0 ]; then
  echo "fuzz-admin: failures above; redial's log:" >&2
  tail -n 50 "$work/redial.log" >&2
fi
exit "$status"
