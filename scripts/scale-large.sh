#!/usr/bin/env bash
# The mesh at a thousand fog nodes: the real node code (libp2p, gossip, sync, sled) of
# LARGE_NODES nodes (default 1000) run by bench/src/bin/mesh_sim.rs in LARGE_PROCESSES processes
# (default 2: every in-process connection takes two descriptors, and one process may hold
# 20,000) in a network namespace of their own, with every node's timers LARGE_SLOW times slower
# (default 10: two cores cannot run a thousand nodes' gossip, syncs and signature checks in real
# time; at 5 the mesh did not form in 15 minutes, at 10 it formed in 9 to 28). One JSON line per
# process and phase on stdout, progress on stderr:
#
#   mesh_sim_idle     no readings: the namespace's loopback bytes per node of the whole mesh and
#                     per simulated second, and the process's CPU per node of its own
#   mesh_sim_query    `top 10` and `stats` asked of one node in-process
#   mesh_sim_loaded   the same as idle with LARGE_LOADED nodes (default 10, split between the
#                     processes) each fed 50 meters reporting every 2 s (simulated)
#
# LARGE_WINDOW sets each measuring window in simulated time (default 60s: ten real minutes at
# the default slowing).
# See mesh_sim.rs for what slowing the timers keeps and what it does not (the figures err high).
# Root, about an hour on two cores; run by `PARTS=large scripts/bench.sh`, or alone. Works in
# run/scale-large-YYYYmmdd-HHMMSS/, removed at the end unless the run failed or KEEP_RUN=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
NODES="${LARGE_NODES:-1000}"
PROCESSES="${LARGE_PROCESSES:-2}"
SLOW="${LARGE_SLOW:-10}"
LOADED="${LARGE_LOADED:-10}"
# In simulated time (real time is LARGE_SLOW times longer).
WINDOW="${LARGE_WINDOW:-60s}"
SETTLE=20s
# Real time.
FORM_DEADLINE=60m
ADDRS_TIMEOUT_S=600
STOP_TIMEOUT_S=120

RUN_DIR=""
NS=""
MACHINE=""
PIDS=()

log() { printf '[scale-large] %s\n' "$*" >&2; }

check_args() {
    local name value
    for name in NODES PROCESSES SLOW LOADED; do
        value="${!name}"
        if ! [[ "$value" =~ ^[0-9]+$ ]] || ((value < 1)); then
            die "LARGE_$name must be a whole number of at least 1, got '$value'"
        fi
    done
    ((NODES % PROCESSES == 0)) || die "LARGE_NODES ($NODES) must split evenly over LARGE_PROCESSES ($PROCESSES)"
    ((LOADED % PROCESSES == 0)) || die "LARGE_LOADED ($LOADED) must split evenly over LARGE_PROCESSES ($PROCESSES)"
    ((EUID == 0)) || die "must run as root: the nodes run in a network namespace of their own (ip netns); try: sudo $0"
    command -v ip >/dev/null || die "the ip command (iproute2) is missing"
}

cleanup() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do
        terminate "$pid"
    done
    if [[ -n "$NS" ]]; then
        ip netns delete "$NS" || log "warning: could not delete network namespace $NS"
    fi
    finish_run_dir "$status"
    exit "$status"
}

main() {
    local started per k dir first_addrs args line
    started="$(date +%s)"
    check_args
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    log "building the mesh simulation (release)..."
    (cd "$ROOT" && cargo build --release -p hydromesh-bench --bin mesh_sim)
    describe_machine
    RUN_DIR="$(new_run_dir scale-large)"
    log "run folder: $RUN_DIR"
    NS="hm-large-$$"
    ip netns add "$NS" || die "cannot create network namespace $NS"
    ip netns exec "$NS" ip link set lo up || die "cannot bring up loopback in $NS"

    per=$((NODES / PROCESSES))
    # The processes meet there before each phase: every window sees the whole mesh in one phase.
    mkdir -p "$RUN_DIR/barrier"
    first_addrs="$RUN_DIR/addrs-0"
    for ((k = 0; k < PROCESSES; k++)); do
        dir="$RUN_DIR/process-$k"
        mkdir -p "$dir"
        args=(--nodes "$per" --offset "$((k * per))" --mesh-size "$NODES" --slow "$SLOW"
            --loaded "$((LOADED / PROCESSES))" --meters 50 --interval 2s --window "$WINDOW"
            --settle "$SETTLE" --rounds 0 --form-deadline "$FORM_DEADLINE"
            --barrier "$RUN_DIR/barrier" --processes "$PROCESSES")
        if ((k == 0)); then
            args+=(--addrs-out "$first_addrs")
        else
            args+=(--join "$first_addrs")
        fi
        log "process $k: nodes $((k * per)) to $(((k + 1) * per - 1)), timers ${SLOW}x slower"
        ip netns exec "$NS" env RUST_LOG=warn "$(release_dir)/mesh_sim" "$dir/data" "${args[@]}" \
            >"$dir/out" 2>"$dir/log" &
        PIDS+=("$!")
        if ((k == 0)); then
            local deadline=$(($(date +%s) + ADDRS_TIMEOUT_S))
            until [[ -s "$first_addrs" ]]; do
                is_alive "${PIDS[0]}" || die "process 0 exited; see $dir/log"
                (($(date +%s) < deadline)) || die "process 0 wrote no addresses within ${ADDRS_TIMEOUT_S}s"
                sleep 1
            done
        fi
    done
    log "waiting for the mesh to form and the phases to run (about an hour)..."
    for ((k = 0; k < PROCESSES; k++)); do
        wait "${PIDS[k]}" || {
            tail -n 20 "$RUN_DIR/process-$k/log" >&2
            die "process $k failed; see $RUN_DIR/process-$k/log"
        }
    done
    PIDS=()
    for ((k = 0; k < PROCESSES; k++)); do
        rm -rf "$RUN_DIR/process-$k/data"
        while IFS= read -r line; do
            emit "${line%\}},\"process\":$k}"
        done <"$RUN_DIR/process-$k/out"
    done
    log "done in $(($(date +%s) - started)) s"
}

main "$@"
