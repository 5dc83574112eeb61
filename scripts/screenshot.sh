#!/usr/bin/env bash
# Takes a PNG screenshot of a running node's dashboard, for people (reports, the README).
#
#   scripts/screenshot.sh [URL] [FILE]
#
# URL: the page (default: the dashboard of node 1 of scripts/mesh.sh, whose bound HTTP address
# the node writes to run/current/node-1/http); a meter's page is URL#/meter/ID.
# FILE: the PNG to write (default: dashboard.png). SCREENSHOT_SIZE=WxH (default 1280x900).
# Needs chromium (scripts/install-test-deps.sh installs it).
#
# For a plain page `chromium --headless --screenshot=FILE --window-size=1280,900 URL` is enough,
# but it shoots at the load event, before the dashboard has fetched its data; and
# --virtual-time-budget never ends on a meter's page, whose live event stream stays open. So this
# drives chromium over the DevTools protocol on a pipe (fds 3 and 4, JSON messages ended by a NUL
# byte): open the page, wait (with a deadline) until it says it has drawn its data, then shoot.
set -euo pipefail
cd "$(dirname "$0")/.."

url="${1:-}"
out="${2:-dashboard.png}"
size="${SCREENSHOT_SIZE:-1280x900}"
width="${size%x*}"
height="${size#*x}"
ready_timeout_s=30

die() {
    echo "error: $*" >&2
    exit 2
}

if [[ -z "$url" ]]; then
    file=run/current/node-1/http
    [[ -s "$file" ]] || die "no $file: start a mesh with scripts/mesh.sh, or give the dashboard's URL"
    url="http://$(head -n 1 "$file")/"
fi
[[ "$width" =~ ^[0-9]+$ && "$height" =~ ^[0-9]+$ ]] || die "SCREENSHOT_SIZE must be WIDTHxHEIGHT, not $size"
browser="$(command -v chromium || true)"
[[ -n "$browser" ]] || die "chromium is missing: run scripts/install-test-deps.sh"
command -v base64 >/dev/null || die "base64 (coreutils) is missing"

profile="$(mktemp -d)"
coproc BROWSER {
    exec "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-quic \
        --no-first-run --no-default-browser-check --disable-background-networking \
        --disable-component-update --disable-sync --disable-extensions --hide-scrollbars --mute-audio \
        --user-data-dir="$profile" --window-size="$width,$height" \
        --remote-debugging-pipe about:blank 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null
}
browser_pid=$BROWSER_PID
to_browser=${BROWSER[1]}
from_browser=${BROWSER[0]}
cleanup() {
    kill "$browser_pid" 2>/dev/null || true
    wait "$browser_pid" 2>/dev/null || true
    rm -rf "$profile"
}
trap cleanup EXIT

id=0
# call METHOD PARAMS [SESSION]: sends a command, prints its answer (skipping events).
call() {
    id=$((id + 1))
    local message="{\"id\":$id,\"method\":\"$1\",\"params\":$2"
    [[ -n "${3:-}" ]] && message+=",\"sessionId\":\"$3\""
    printf '%s}\0' "$message" >&"$to_browser"
    local answer
    while IFS= read -r -d '' -t 30 answer <&"$from_browser"; do
        if [[ "$answer" == "{\"id\":$id,"* ]]; then
            [[ "$answer" != *'"error":{'* ]] || die "chromium refused $1: $answer"
            printf '%s' "$answer"
            return 0
        fi
    done
    die "no answer from chromium to $1"
}
# field NAME JSON: the value of the string field NAME.
field() {
    sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" <<<"$2"
}

target="$(field targetId "$(call Target.createTarget "{\"url\":\"about:blank\"}")")"
session="$(field sessionId "$(call Target.attachToTarget "{\"targetId\":\"$target\",\"flatten\":true}")")"
[[ -n "$session" ]] || die "cannot attach to chromium's page"
call Emulation.setDeviceMetricsOverride \
    "{\"width\":$width,\"height\":$height,\"deviceScaleFactor\":1,\"mobile\":false}" "$session" >/dev/null
call Page.navigate "{\"url\":\"${url//\"/%22}\"}" "$session" >/dev/null

ready='document.documentElement.dataset.state === \"ready\"'
deadline=$((SECONDS + ready_timeout_s))
until [[ "$(call Runtime.evaluate "{\"expression\":\"$ready\"}" "$session")" == *'"value":true'* ]]; do
    ((SECONDS < deadline)) || die "$url did not show its data within ${ready_timeout_s}s (is it a hydromesh dashboard?)"
    sleep 0.2
done
# Let the last paint land (charts are drawn in the same task that sets the state).
call Runtime.evaluate '{"expression":"new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))","awaitPromise":true}' "$session" >/dev/null

shot="$(call Page.captureScreenshot '{"format":"png"}' "$session")"
data="$(field data "$shot")"
[[ -n "$data" ]] || die "chromium sent no screenshot"
base64 -d <<<"$data" >"$out"
call Browser.close '{}' >/dev/null || true
echo "$out"
