#!/usr/bin/env bash
# Checks the HTTP API against its own OpenAPI document with a schema-driven fuzzer
# (Schemathesis, installed from PyPI into run/fuzz-venv on first use): one node with an admin
# key and token and a few meters, then every operation with generated requests, valid and
# invalid. It fails on a server error (5xx), an answer its document does not describe, a
# request the document allows but the node refuses, or one it forbids but the node accepts.
#
#   scripts/fuzz-api.sh [EXAMPLES]     (default 40 examples per operation; about a minute)
#
# Left out: POST /api/v1/admin/signed, whose body is a signature (valid hex that is no signed
# command is refused, and no schema can say otherwise); and the live event streams.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXAMPLES="${1:-40}"
HTTP_ADDR="127.0.0.1:${FUZZ_HTTP_PORT:-18090}"
STOP_TIMEOUT_S=10
ADDRS_TIMEOUT_S=30
log() { printf '[fuzz-api] %s\n' "$*" >&2; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

VENV="$ROOT/run/fuzz-venv"
if [[ ! -x "$VENV/bin/schemathesis" ]]; then
    log "installing Schemathesis into $VENV..."
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet schemathesis
fi
log "building hydromesh..."
(cd "$ROOT" && cargo build --release --locked --quiet -p hydromesh)
BIN="$(release_dir)/hydromesh"

RUN_DIR="$(new_run_dir fuzz)"
PUBKEY="$("$BIN" keygen --out "$RUN_DIR/admin.key" 2>/dev/null)"
"$BIN" node --data-dir "$RUN_DIR/node" --listen /ip4/127.0.0.1/tcp/0 --http "$HTTP_ADDR" --mqtt off \
    --admin-pubkey "$PUBKEY" --admin-key "$RUN_DIR/admin.key" --admin-token fuzz-token \
    >"$RUN_DIR/node.log" 2>&1 &
NODE_PID=$!
trap 'kill "$NODE_PID" 2>/dev/null; wait "$NODE_PID" 2>/dev/null || true' EXIT
deadline=$(($(date +%s) + ADDRS_TIMEOUT_S))
until [[ -s "$RUN_DIR/node/addrs" ]]; do
    (($(date +%s) < deadline)) || die "the node did not start; see $RUN_DIR/node.log"
    sleep 0.1
done
addr="$(head -1 "$RUN_DIR/node/addrs")"
now_ms=$(($(date +%s) * 1000))
{
    echo "meter,ts,litres"
    for meter in 0 1 2 200 0014a807 ZRI-77_x; do
        for hours in 3 2 1; do
            echo "$meter,$((now_ms - hours * 3600000)),$((1000 - hours * 10))"
        done
    done
} | "$BIN" ingest --peer "$addr" - >/dev/null

# A batch over the document's maxItems (10,000 readings) is refused whole with 413 Content Too
# Large, which the fuzzer does not count among refusals by default.
cat >"$RUN_DIR/schemathesis.toml" <<'TOML'
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
TOML
log "fuzzing http://$HTTP_ADDR with $EXAMPLES examples per operation..."
# Its cache goes in the run folder.
cd "$RUN_DIR"
"$VENV/bin/schemathesis" --config-file "$RUN_DIR/schemathesis.toml" run "http://$HTTP_ADDR/api/v1/openapi.json" \
    --header "Authorization: Bearer fuzz-token" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance,positive_data_acceptance,negative_data_rejection \
    --max-examples "$EXAMPLES" \
    --exclude-path /api/v1/admin/signed --exclude-path-regex live
