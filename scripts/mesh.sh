#!/usr/bin/env bash
# Starts a local hydromesh demo mesh on loopback, or stops the one recorded as running.
#
#   scripts/mesh.sh [N]    build, start N fog nodes (default 3) in a chain with one simulator
#                          each, wait until every node sees the whole mesh, print how to use it
#   scripts/mesh.sh stop   stop the processes recorded in run/current/*.pid
#
# Everything a run makes (data dirs, logs, pid files) lives in run/mesh-YYYYmmdd-HHMMSS/ under
# the repository, and run/current points at the latest one. Needs only bash and coreutils.
set -euo pipefail

# The repository is the script's parent folder, wherever the script is called from.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
RUN_BASE="$ROOT/run"
CURRENT="$RUN_BASE/current"
# Nodes republish often so that a node that joins late is seen quickly.
REPUBLISH=5s
METERS_PER_NODE=20
# A few leaky meters on fog-1 besides its fleet, so the mesh has alerts to show.
LEAKY_METERS=3
# Simulated meters first send this much history, so consumption and leaks show at once.
BACKFILL=2d
# The rationing rule the demo sets: cut meters above this multiple of the mesh-wide average.
ABOVE_AVERAGE=2.5
READY_TIMEOUT_S=60
ADDRS_TIMEOUT_S=30
STOP_TIMEOUT_S=10

RUN_DIR=""
BIN=""
ADMIN_KEY=""
ADMIN_PUBKEY=""
# Set once the mesh is up: from then on the EXIT trap leaves the processes running.
STARTED=0

log() { printf '%s\n' "$*" >&2; }

usage() {
    log "usage: scripts/mesh.sh [N]     start N fog nodes (default 3) with one simulator each"
    log "       scripts/mesh.sh stop    stop the mesh recorded in run/current"
}

build() {
    log "building hydromesh (release)..."
    (cd "$ROOT" && cargo build --release --bin hydromesh)
    BIN="$(release_dir)/hydromesh"
    [[ -x "$BIN" ]] || die "cargo finished but $BIN is missing"
}

# Whether PID still runs hydromesh: a pid file can outlive its process (reboot, crash), and the
# number may since belong to something else, which must not be killed.
is_hydromesh() {
    local pid="$1" cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *hydromesh* ]]
}

# Stops the processes of the pid files in DIR: simulators before nodes, so that no simulator
# logs errors about a node that went away first. Prints what it stopped.
stop_dir() {
    local dir="$1" pidfile name pid stopped=0
    [[ -d "$dir" ]] || return 0
    for pidfile in "$dir"/sim-*.pid "$dir"/node-*.pid; do
        [[ -e "$pidfile" ]] || continue
        name="$(basename "$pidfile" .pid)"
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && is_alive "$pid" && is_hydromesh "$pid"; then
            terminate "$pid"
            printf 'stopped %s (pid %s)\n' "$name" "$pid"
            stopped=$((stopped + 1))
        else
            printf '%s (pid %s) was not running\n' "$name" "${pid:-?}"
        fi
        rm -f "$pidfile"
    done
    if ((stopped == 0)); then
        printf 'nothing running in %s\n' "$dir"
    fi
}

cmd_stop() {
    if [[ ! -e "$CURRENT" ]]; then
        printf 'nothing running (no %s)\n' "$CURRENT"
        return 0
    fi
    stop_dir "$(cd "$CURRENT" && pwd -P)"
}

# Whether run/current still records a live process.
mesh_running() {
    local pidfile pid
    [[ -d "$CURRENT" ]] || return 1
    for pidfile in "$CURRENT"/*.pid; do
        [[ -e "$pidfile" ]] || continue
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && is_alive "$pid" && is_hydromesh "$pid"; then
            return 0
        fi
    done
    return 1
}

# A fresh run folder; the suffix only matters when two runs start within the same second.
make_run_dir() {
    local dir
    dir="$(new_run_dir mesh)"
    RUN_DIR="$dir"
    # Relative target, so the link survives moving the repository.
    ln -sfn "$(basename "$dir")" "$CURRENT"
}

# Runs "$@" in the background, immune to the terminal's hangup (the mesh outlives this script),
# with output to LOG and the pid in PIDFILE.
spawn() {
    local logfile="$1" pidfile="$2"
    shift 2
    RUST_LOG=info nohup "$@" </dev/null >"$logfile" 2>&1 &
    printf '%s\n' "$!" >"$pidfile"
}

# Fails with the log's path when the process of PIDFILE has exited.
check_alive() {
    local name="$1"
    if ! is_alive "$(cat "$RUN_DIR/$name.pid")"; then
        log "--- last lines of $RUN_DIR/$name.log ---"
        tail -n 20 "$RUN_DIR/$name.log" >&2 || true
        die "$name exited; see $RUN_DIR/$name.log"
    fi
}

start_nodes() {
    local n="$1" i prev="" bootstrap
    for ((i = 1; i <= n; i++)); do
        bootstrap=()
        if [[ -n "$prev" ]]; then
            bootstrap=(--bootstrap "$prev")
        fi
        spawn "$RUN_DIR/node-$i.log" "$RUN_DIR/node-$i.pid" \
            "$BIN" node --data-dir "$RUN_DIR/node-$i" --listen /ip4/127.0.0.1/tcp/0 \
            --http 127.0.0.1:0 --mqtt 127.0.0.1:0 --admin-pubkey "$ADMIN_PUBKEY" \
            "${bootstrap[@]}" --name "fog-$i" --republish "$REPUBLISH"
        # The next node needs this one's address, and each chain link is only as good as it.
        prev="$(node_addr "node-$i" "$RUN_DIR/node-$i" "$RUN_DIR/node-$i.pid" "$RUN_DIR/node-$i.log")"
        log "fog-$i listening on $prev"
    done
}

start_simulators() {
    local n="$1" i
    for ((i = 1; i <= n; i++)); do
        spawn "$RUN_DIR/sim-$i.log" "$RUN_DIR/sim-$i.pid" \
            "$BIN" simulate --peer "$(head -n 1 "$RUN_DIR/node-$i/addrs")" \
            --meters "$METERS_PER_NODE" --first-meter "$((i * 1000))" --interval 2s \
            --seed "$i" --profile mixed --backfill "$BACKFILL"
    done
    spawn "$RUN_DIR/sim-leaky.log" "$RUN_DIR/sim-leaky.pid" \
        "$BIN" simulate --peer "$(head -n 1 "$RUN_DIR/node-1/addrs")" \
        --meters "$LEAKY_METERS" --first-meter 900 --interval 2s --seed 99 --profile leaky \
        --backfill "$BACKFILL"
}

# The demo's admin key: nodes trust it, and the printed admin commands use it.
make_admin_key() {
    ADMIN_KEY="$RUN_DIR/admin.key"
    ADMIN_PUBKEY="$("$BIN" keygen --out "$ADMIN_KEY" 2>/dev/null)" || die "cannot create $ADMIN_KEY"
}

# The total number of simulated meters of an N-node mesh.
total_meters() {
    printf '%s\n' "$(($1 * METERS_PER_NODE + LEAKY_METERS))"
}

# Whether node I sees N live nodes and N*METERS_PER_NODE meters.
node_ready() {
    local i="$1" n="$2" addr peers stats
    addr="$(head -n 1 "$RUN_DIR/node-$i/addrs")"
    peers="$("$BIN" query --peer "$addr" --timeout 2s --json peers 2>/dev/null)" || return 1
    # N entries in the peers list, none of them stale, and all N in the answer's coverage.
    [[ "$(grep -o '"peer":"' <<<"$peers" | wc -l)" == "$n" ]] || return 1
    [[ "$peers" != *'"stale":true'* ]] || return 1
    [[ "$(json_number nodes "$peers")" == "$n" ]] || return 1
    [[ "$(json_number stale_nodes "$peers")" == "0" ]] || return 1
    stats="$("$BIN" query --peer "$addr" --timeout 2s --json stats 2>/dev/null)" || return 1
    [[ "$(json_number meters "$stats")" == "$(total_meters "$n")" ]]
}

wait_ready() {
    local n="$1" i deadline all
    deadline=$(($(date +%s) + READY_TIMEOUT_S))
    log "waiting for every node to see $n nodes and $(total_meters "$n") meters..."
    while :; do
        # A dead process never becomes ready: fail at once instead of at the deadline.
        for ((i = 1; i <= n; i++)); do
            check_alive "node-$i"
            check_alive "sim-$i"
        done
        check_alive "sim-leaky"
        all=1
        for ((i = 1; i <= n; i++)); do
            if ! node_ready "$i" "$n"; then
                all=0
                break
            fi
        done
        ((all)) && return 0
        if (($(date +%s) >= deadline)); then
            die "the mesh did not converge within ${READY_TIMEOUT_S}s (node $i not ready); logs in $RUN_DIR"
        fi
        sleep 0.5
    done
}

# Sets the demo's rationing policy through fog-1, then waits (briefly) for the cuts to show.
set_policy() {
    local n="$1" first last deadline
    first="$(head -n 1 "$RUN_DIR/node-1/addrs")"
    last="$(head -n 1 "$RUN_DIR/node-$n/addrs")"
    "$BIN" admin --peer "$first" --key "$ADMIN_KEY" policy --above-average "$ABOVE_AVERAGE" >&2 ||
        log "warning: the policy was not set"
    deadline=$(($(date +%s) + 15))
    while (($(date +%s) < deadline)); do
        if [[ "$("$BIN" query --peer "$last" --timeout 2s --json blocked 2>/dev/null)" == *'"meter":'* ]]; then
            return 0
        fi
        sleep 0.5
    done
}

print_usage_block() {
    local n="$1" i addr last
    printf '\nGlobal top-10, asked of fog-%s:\n' "$n"
    last="$(head -n 1 "$RUN_DIR/node-$n/addrs")"
    # The mesh is up at this point: a failed query is worth a warning, not a teardown.
    "$BIN" query --peer "$last" top || log "warning: the top query failed; try it again below"
    printf '\nBlocked meters (policy: above %s × the mesh-wide average), asked of fog-%s:\n' "$ABOVE_AVERAGE" "$n"
    "$BIN" query --peer "$last" blocked || log "warning: the blocked query failed"
    printf '\nAlerts, asked of fog-%s:\n' "$n"
    "$BIN" query --peer "$last" alerts || log "warning: the alerts query failed"
    printf '\nDashboards:\n'
    for ((i = 1; i <= n; i++)); do
        [[ -s "$RUN_DIR/node-$i/http" ]] && printf '  fog-%s  http://%s/\n' "$i" "$(head -n 1 "$RUN_DIR/node-$i/http")"
    done
    printf '\nAsk any node (each answers for the whole mesh):\n'
    for ((i = 1; i <= n; i++)); do
        addr="$(head -n 1 "$RUN_DIR/node-$i/addrs")"
        printf '  %q query --peer %s top\n' "$BIN" "$addr"
    done
    printf '\nMore questions (any node):\n'
    printf '  %q query --peer %s stats\n' "$BIN" "$last"
    printf '  %q query --peer %s peers\n' "$BIN" "$last"
    printf '  %q query --peer %s meter %s\n' "$BIN" "$last" 1000
    printf '  %q query --peer %s --json top -n 20\n' "$BIN" "$last"
    printf '  %q query --peer %s alerts --kind leak\n' "$BIN" "$last"
    printf '  %q query --peer %s bill 900\n' "$BIN" "$last"
    printf '  %q query --peer %s meter 900 --follow\n' "$BIN" "$last"
    printf '\nAdmin (key %s):\n' "$ADMIN_KEY"
    printf '  %q admin --peer %s policy\n' "$BIN" "$last"
    printf '  %q admin --peer %s --key %s policy --cap-l 500\n' "$BIN" "$last" "$ADMIN_KEY"
    printf '  %q admin --peer %s --key %s block 1001 --reason inspection\n' "$BIN" "$last" "$ADMIN_KEY"
    printf '  %q admin --peer %s --key %s unblock 1001\n' "$BIN" "$last" "$ADMIN_KEY"
    printf '\nLogs and data: %s\n' "$RUN_DIR"
    printf 'Stop the mesh: scripts/mesh.sh stop\n'
}

# On any failure before the mesh is up, stop what this run started and point at its logs.
on_exit() {
    local status=$?
    if ((STARTED == 0)) && [[ -n "$RUN_DIR" ]]; then
        log "start failed (status $status); stopping what was started"
        stop_dir "$RUN_DIR" >&2
        log "logs: $RUN_DIR"
        ((status != 0)) || status=1
    fi
    exit "$status"
}

cmd_start() {
    local n="$1"
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || ((n > 50)); then
        usage
        die "N must be a whole number from 1 to 50, got '$n'"
    fi
    # Two meshes would fight over run/current; stop the recorded one first.
    if mesh_running; then
        log "a mesh is already running ($(readlink "$CURRENT")); stopping it first"
        cmd_stop >&2
    fi
    build
    trap on_exit EXIT
    # Ctrl-C or kill during start-up: exit, so the EXIT trap cleans up.
    trap 'exit 130' INT TERM
    make_run_dir
    printf '%s\n' "$RUN_DIR"
    make_admin_key
    start_nodes "$n"
    start_simulators "$n"
    wait_ready "$n"
    set_policy "$n"
    STARTED=1
    print_usage_block "$n"
}

main() {
    case "${1:-3}" in
        stop) cmd_stop ;;
        -h | --help | help) usage ;;
        *) cmd_start "${1:-3}" ;;
    esac
}

main "$@"
