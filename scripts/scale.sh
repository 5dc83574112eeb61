#!/usr/bin/env bash
# The "scale" benchmarks: mesh traffic and CPU of many real `hydromesh node` processes on one
# machine, machine-readable: one JSON object per line per figure on stdout, progress on stderr.
#
#   scale_idle     SCALE_NODES fog nodes (default 100), no readings coming in: loopback bytes per
#                  node per second and CPU per node, over SCALE_WINDOW_S (default 60 s)
#   scale_loaded   the same with SCALE_LOADED of the nodes (default 10) each fed by a simulator of
#                  50 meters reporting every 2 s
#   mesh_sim_*     for each count in SIM_NODES (default "20 100"), that many fog nodes running
#                  the real node code in one process (bench/src/bin/mesh_sim.rs), after the real
#                  nodes are stopped: idle and loaded bytes and CPU per node, node-side `top 10`
#                  and `stats` times, and convergence (ack on one node to the exact top-10 on
#                  every node). SIM_NODES=0 skips it. 300 runs in about 4 minutes; 1,000 do not
#                  run in real time on two cores (scripts/scale-large.sh runs them slowed).
#   view_answers   the global `top 10` and `stats` computed from a view of 100 and 1,000 nodes
#                  (bench/src/bin/view_bench.rs), with 100 and with 3 top meters per node
#
# The nodes run in a network namespace of their own (hm-scale-PID), so that its loopback carries
# nothing but their traffic; that needs root. Node 1 has no bootstrap, every other node
# bootstraps to node 1 and to one random earlier node (SCALE_SEED, default 1, makes the choice
# repeatable). They are started in waves of SCALE_WAVE (default 10), each wave once node 1 sees
# every node started before it; the run fails unless the whole mesh has converged (first, middle
# and last node each include all nodes) within CONVERGE_TIMEOUT_S of the first start.
#
# Runs alone (scripts/scale.sh) or from scripts/bench.sh (about 10 minutes). Works in run/scale-YYYYmmdd-HHMMSS/
# under the repository, removed at the end unless the run failed or KEEP_RUN=1. Every process it
# starts is stopped and the namespace deleted on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
NODES="${SCALE_NODES:-100}"
LOADED="${SCALE_LOADED:-10}"
WINDOW_S="${SCALE_WINDOW_S:-60}"
WAVE="${SCALE_WAVE:-10}"
SEED="${SCALE_SEED:-1}"
SIM_NODES="${SIM_NODES:-20 100}"
# The simulation's windows: shorter than the real run's, to keep the whole part within 10 min.
SIM_WINDOW=30s
SIM_SETTLE=20s
# Each simulator of the loaded phase.
METERS_PER_SIM=50
SIM_INTERVAL=2s
# After convergence, and after the simulators start, before a window opens.
SETTLE_S=20
CONVERGE_TIMEOUT_S=300
# The mesh must still include every node (and every simulated meter) after the loaded window.
RECHECK_TIMEOUT_S=60
# How long one `hydromesh query` may take: a busy node answers slowly, which is not a failure.
QUERY_TIMEOUT=10s
ADDRS_TIMEOUT_S=30
STOP_TIMEOUT_S=10

RUN_DIR=""
BIN=""
NS=""
MACHINE=""
# Pids of the nodes (index i-1 is fog-i), and of the simulators with their names.
NODE_PIDS=()
SIM_PIDS=()
SIM_NAMES=()
# Node addresses, index i-1 is fog-i.
ADDRS=()
# The nodes the convergence checks ask: first, middle and last.
SAMPLE=()
# Where the window measurement leaves its results (see measure_window).
BYTES_PER_NODE_PER_S=""
BYTES_PER_S=""
CPU_PERCENT_PER_NODE=""
CPU_PERCENT=""
MEASURED_S=""

log() { printf '[scale] %s\n' "$*" >&2; }

# The caller's HYDROMESH_* variables (HYDROMESH_BOOTSTRAP, HYDROMESH_MDNS, HYDROMESH_CONFIG,
# HYDROMESH_PEER...) would silently change every node and every CLI call: everything is given
# as flags here instead.
unset_hydromesh_env() {
    local var
    for var in "${!HYDROMESH_@}"; do
        unset "$var"
    done
}

check_args() {
    if ! [[ "$NODES" =~ ^[0-9]+$ ]] || ((NODES < 2)); then
        die "SCALE_NODES must be a whole number of at least 2, got '$NODES'"
    fi
    if ! [[ "$LOADED" =~ ^[0-9]+$ ]] || ((LOADED < 1 || LOADED > NODES)); then
        die "SCALE_LOADED must be a whole number from 1 to SCALE_NODES ($NODES), got '$LOADED'"
    fi
    if ! [[ "$WINDOW_S" =~ ^[0-9]+$ ]] || ((WINDOW_S < 1)); then
        die "SCALE_WINDOW_S must be a whole number of seconds, at least 1, got '$WINDOW_S'"
    fi
    if ! [[ "$WAVE" =~ ^[0-9]+$ ]] || ((WAVE < 1)); then
        die "SCALE_WAVE must be a whole number of at least 1, got '$WAVE'"
    fi
    [[ "$SEED" =~ ^[0-9]+$ ]] || die "SCALE_SEED must be a whole number, got '$SEED'"
    ((EUID == 0)) || die "must run as root: the nodes run in a network namespace of their own (ip netns); try: sudo $0"
    command -v ip >/dev/null || die "the ip command (iproute2) is missing"
}

build() {
    log "building hydromesh and the mesh simulation (release)..."
    (cd "$ROOT" && cargo build --release -p hydromesh -p hydromesh-bench --bin hydromesh --bin mesh_sim --bin view_bench)
    BIN="$(release_dir)/hydromesh"
    [[ -x "$BIN" ]] || die "cargo finished but $BIN is missing"
}

make_run_dir() {
    RUN_DIR="$(new_run_dir scale)"
    log "run folder: $RUN_DIR"
}

# A namespace with only its loopback, up: its counters see the nodes' traffic and nothing else.
make_namespace() {
    local name="hm-scale-$$"
    if ip netns list | grep -q "^$name\b"; then
        die "network namespace $name already exists (left by an earlier run?); delete it with: ip netns delete $name"
    fi
    ip netns add "$name" || die "cannot create network namespace $name"
    NS="$name"
    ip netns exec "$NS" ip link set lo up || die "cannot bring up loopback in $NS"
    log "network namespace: $NS"
}

# Runs "$@" inside the namespace (for foreground commands: a function run in the background
# forks a subshell, whose pid is not the command's).
in_ns() {
    ip netns exec "$NS" "$@"
}

# Dies unless PID runs the hydromesh binary: the pids measured and stopped must be the
# processes' own. `ip netns exec` execs the command in place, so a plain background
# `ip netns exec NS BIN ... &` gives the command's pid in $!.
check_is_bin() {
    local pid="$1" name="$2" exe
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || die "$name (pid $pid) is gone"
    [[ "$exe" == "$(readlink -f "$BIN")" ]] || die "pid $pid runs $exe, not $BIN: $name was started through a wrapper"
}

# Bytes sent on the namespace's loopback since it was created.
lo_tx_bytes() {
    in_ns cat /sys/class/net/lo/statistics/tx_bytes
}

# Starts fog-I in the namespace with the bootstrap addresses that follow; warn-level logs only,
# so that 100 logs do not fill the disk.
start_node() {
    local i="$1" name="fog-$1" bootstrap=() addr
    shift
    for addr in "$@"; do
        bootstrap+=(--bootstrap "$addr")
    done
    # No --mdns (off by default), TCP only (no QUIC listener), no HTTP or MQTT front end.
    RUST_LOG=warn ip netns exec "$NS" "$BIN" node --data-dir "$RUN_DIR/$name" --listen /ip4/127.0.0.1/tcp/0 \
        --http off --mqtt off --name "$name" "${bootstrap[@]}" </dev/null >"$RUN_DIR/$name.log" 2>&1 &
    NODE_PIDS+=("$!")
    printf '%s\n' "$!" >"$RUN_DIR/$name.pid"
}

# Prints fog-I's first dialable address once it has written it (by then the node runs).
fog_addr() {
    node_addr "fog-$1" "$RUN_DIR/fog-$1" "$RUN_DIR/fog-$1.pid" "$RUN_DIR/fog-$1.log"
    check_is_bin "${NODE_PIDS[$1 - 1]}" "fog-$1"
}

# Dies, with the end of its log, if a node has exited.
check_nodes_alive() {
    local i
    for ((i = 1; i <= ${#NODE_PIDS[@]}; i++)); do
        if ! is_alive "${NODE_PIDS[i - 1]}"; then
            log "--- last lines of $RUN_DIR/fog-$i.log ---"
            tail -n 20 "$RUN_DIR/fog-$i.log" >&2 || true
            die "fog-$i exited; see $RUN_DIR/fog-$i.log"
        fi
    done
}

# Number of peer ids in the "included" list of a one-line JSON answer (the nodes the answer
# covers, stale or not).
included_count() {
    local list
    list="$(grep -o '"included":\[[^]]*\]' <<<"$1" | head -n 1)" || true
    list="${list#*[}"
    list="${list%]}"
    if [[ -z "$list" ]]; then
        printf '0\n'
    else
        tr ',' '\n' <<<"$list" | grep -c . || true
    fi
}

# fog-I's `query stats --json` answer (empty when it does not answer).
stats_of() {
    in_ns "$BIN" query --peer "${ADDRS[$1 - 1]}" --timeout "$QUERY_TIMEOUT" --json stats 2>/dev/null || true
}

# How many nodes fog-I's stats include ("?" when it does not answer).
seen_by() {
    local out
    out="$(stats_of "$1")"
    if [[ -z "$out" ]]; then
        printf '?\n'
    else
        included_count "$out"
    fi
}

# Starts the nodes in waves. Within a wave nodes start one after another, each once the previous
# one has written its address, so that every node can bootstrap to any earlier one; the next
# wave starts once node 1 includes every node started so far, so that the joins of 100 nodes are
# spread out rather than all at once on two cores.
start_mesh() {
    local deadline="$1" i j first seen last_log=0
    RANDOM="$SEED"
    start_node 1
    ADDRS+=("$(fog_addr 1)")
    for ((first = 2; first <= NODES; first += WAVE)); do
        for ((i = first; i < first + WAVE && i <= NODES; i++)); do
            if ((i == 2)); then
                start_node "$i" "${ADDRS[0]}"
            else
                # A random earlier node other than node 1: 2..i-1.
                j=$((2 + RANDOM % (i - 2)))
                start_node "$i" "${ADDRS[0]}" "${ADDRS[j - 1]}"
            fi
            ADDRS+=("$(fog_addr "$i")")
        done
        log "started fog-$first..fog-$((i - 1)); waiting for fog-1 to include all $((i - 1))..."
        while :; do
            check_nodes_alive
            seen="$(seen_by 1)"
            [[ "$seen" == "$((i - 1))" ]] && break
            if (($(date +%s) >= deadline)); then
                die "fog-1 includes $seen of the $((i - 1)) nodes started after ${CONVERGE_TIMEOUT_S}s (wave fog-$first..fog-$((i - 1))); logs in $RUN_DIR"
            fi
            if (($(date +%s) - last_log >= 10)); then
                last_log="$(date +%s)"
                log "  fog-1 includes $seen/$((i - 1))"
            fi
            sleep 0.5
        done
    done
}

# Whether the sample nodes each include N nodes (and, when given, METERS meters); logs what they
# see every 10 s, and at once when it changes.
SEEN_LINE=""
SEEN_LOGGED_AT=0
sample_converged() {
    local n="$1" meters="${2:-}" started="$3" i out count m line="" ok=0
    for i in "${SAMPLE[@]}"; do
        out="$(stats_of "$i")"
        if [[ -z "$out" ]]; then
            count="?"
            m="?"
        else
            count="$(included_count "$out")"
            m="$(json_number meters "$out")"
        fi
        line+=" fog-$i:$count"
        [[ -n "$meters" ]] && line+="(${m:-?} meters)"
        [[ "$count" == "$n" && (-z "$meters" || "$m" == "$meters") ]] || ok=1
    done
    if [[ "$line" != "$SEEN_LINE" ]] || (($(date +%s) - SEEN_LOGGED_AT >= 10)); then
        log "  t+$(($(date +%s) - started))s nodes included:$line (of $n)"
        SEEN_LINE="$line"
        SEEN_LOGGED_AT="$(date +%s)"
    fi
    return "$ok"
}

# Polls the sample nodes until each includes all N nodes (and METERS meters, when given); dies
# at DEADLINE with what they saw.
wait_converged() {
    local deadline="$1" started="$2" meters="${3:-}"
    SEEN_LINE=""
    while :; do
        check_nodes_alive
        sample_converged "$NODES" "$meters" "$started" && return 0
        if (($(date +%s) >= deadline)); then
            die "the mesh did not converge by t+$(($(date +%s) - started))s: included by the sample nodes:$SEEN_LINE (of $NODES${meters:+, $meters meters expected}); logs in $RUN_DIR"
        fi
        sleep 1
    done
}

# The CPU time (user + system, clock ticks) every node has used so far, summed. Builtins only:
# with 100 nodes loading both cores, a `cat` per node would take seconds.
nodes_cpu_ticks() {
    local pid stat total=0 fields
    for pid in "${NODE_PIDS[@]}"; do
        IFS= read -r stat <"/proc/$pid/stat" || die "node pid $pid is gone; logs in $RUN_DIR"
        # After "pid (comm) " the fields start at the 3rd (state): utime and stime, the 14th and
        # 15th, are the 12th and 13th of the rest.
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    printf '%s\n' "$total"
}

# Measures WINDOW_S seconds of the running mesh: loopback bytes and the nodes' CPU time, each
# over the time actually elapsed between its two readings.
# On loopback every byte sent is counted once in tx_bytes (and once again in rx_bytes, which is
# therefore not added), so the traffic per node is delta_tx / NODES / seconds. In the loaded
# phase the simulators' readings to their nodes cross the same loopback and are included.
measure_window() {
    local tx0 tx1 cpu0 cpu1 t_tx0 t_tx1 t_cpu0 t_cpu1 ticks tx_s cpu_s
    ticks="$(getconf CLK_TCK)"
    log "measuring for ${WINDOW_S}s..."
    t_tx0="$(now_ns)"
    tx0="$(lo_tx_bytes)"
    t_cpu0="$(now_ns)"
    cpu0="$(nodes_cpu_ticks)"
    sleep "$WINDOW_S"
    t_tx1="$(now_ns)"
    tx1="$(lo_tx_bytes)"
    t_cpu1="$(now_ns)"
    cpu1="$(nodes_cpu_ticks)"
    check_nodes_alive
    tx_s="$(awk -v ns=$((t_tx1 - t_tx0)) 'BEGIN { printf "%.3f", ns / 1e9 }')"
    cpu_s="$(awk -v ns=$((t_cpu1 - t_cpu0)) 'BEGIN { printf "%.3f", ns / 1e9 }')"
    MEASURED_S="$(awk -v s="$tx_s" 'BEGIN { printf "%.1f", s }')"
    BYTES_PER_S="$(awk -v b=$((tx1 - tx0)) -v s="$tx_s" 'BEGIN { printf "%.0f", b / s }')"
    BYTES_PER_NODE_PER_S="$(awk -v b=$((tx1 - tx0)) -v s="$tx_s" -v n="$NODES" 'BEGIN { printf "%.0f", b / n / s }')"
    # Percent of one core, summed over the nodes, then per node.
    CPU_PERCENT="$(awk -v t=$((cpu1 - cpu0)) -v hz="$ticks" -v s="$cpu_s" 'BEGIN { printf "%.1f", 100 * t / hz / s }')"
    CPU_PERCENT_PER_NODE="$(awk -v t=$((cpu1 - cpu0)) -v hz="$ticks" -v s="$cpu_s" -v n="$NODES" 'BEGIN { printf "%.2f", 100 * t / hz / s / n }')"
    log "  $BYTES_PER_S bytes/s on loopback ($BYTES_PER_NODE_PER_S per node), nodes' CPU $CPU_PERCENT% of one core ($CPU_PERCENT_PER_NODE% per node), over ${tx_s}s and ${cpu_s}s"
}

# The JSON fields both phases share.
window_fields() {
    printf '"nodes":%s,"bytes_per_node_per_s":%s,"cpu_percent_per_node":%s,"window_s":%s,"bytes_per_s":%s,"cpu_percent":%s' \
        "$NODES" "$BYTES_PER_NODE_PER_S" "$CPU_PERCENT_PER_NODE" "$MEASURED_S" "$BYTES_PER_S" "$CPU_PERCENT"
}

# Dies, with the end of its log, if a simulator has exited.
check_sims_alive() {
    local k name
    for ((k = 0; k < ${#SIM_PIDS[@]}; k++)); do
        name="${SIM_NAMES[k]}"
        if ! is_alive "${SIM_PIDS[k]}"; then
            log "--- last lines of $RUN_DIR/$name.log ---"
            tail -n 20 "$RUN_DIR/$name.log" >&2 || true
            die "$name exited; see $RUN_DIR/$name.log"
        fi
        check_is_bin "${SIM_PIDS[k]}" "$name"
    done
}

# LOADED simulators of METERS_PER_SIM meters, on nodes spread evenly over the mesh; sim-I feeds
# fog-I.
start_simulators() {
    local k i
    for ((k = 0; k < LOADED; k++)); do
        i=$((1 + k * NODES / LOADED))
        RUST_LOG=warn ip netns exec "$NS" "$BIN" simulate --peer "${ADDRS[i - 1]}" --meters "$METERS_PER_SIM" \
            --first-meter "$((i * 1000))" --interval "$SIM_INTERVAL" --seed "$i" \
            </dev/null >"$RUN_DIR/sim-$i.log" 2>&1 &
        SIM_PIDS+=("$!")
        SIM_NAMES+=("sim-$i")
        printf '%s\n' "$!" >"$RUN_DIR/sim-$i.pid"
    done
    log "started $LOADED simulators of $METERS_PER_SIM meters every $SIM_INTERVAL"
}

# SIGTERM to every pid given, up to STOP_TIMEOUT_S for all of them to exit (a node flushes its
# store), then SIGKILL: terminate from lib.sh, for many processes at once.
stop_all() {
    local pid deadline left
    (($# > 0)) || return 0
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$(($(date +%s) + STOP_TIMEOUT_S))
    while :; do
        left=()
        for pid in "$@"; do
            is_alive "$pid" && left+=("$pid")
        done
        ((${#left[@]} == 0)) && break
        if (($(date +%s) >= deadline)); then
            log "${#left[@]} processes still running after ${STOP_TIMEOUT_S}s: SIGKILL (${left[*]})"
            kill -KILL "${left[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    for pid in "$@"; do
        wait "$pid" 2>/dev/null || true
    done
}

# What the nodes logged at warn level or above: counts, and the most frequent messages (with
# timestamps, ids and numbers folded so that repeats group).
summarise_logs() {
    local logs=("$RUN_DIR"/fog-*.log) lines
    [[ -e "${logs[0]}" ]] || return 0
    lines="$(awk '/ (WARN|ERROR) / { n++ } END { print n + 0 }' "${logs[@]}")"
    log "node logs: $lines warn/error lines in ${#logs[@]} logs"
    ((lines > 0)) || return 0
    grep -h -E ' (WARN|ERROR) ' "${logs[@]}" |
        sed -E 's/^[^ ]+ +//; s/12D3KooW[A-Za-z0-9]+/<peer>/g; s/[0-9]+/N/g' |
        sort | uniq -c | sort -rn | head -n 5 | while IFS= read -r line; do
        log "  ${line:0:300}"
    done
}

# Stops every process this run started (simulators, then nodes), deletes the namespace, and
# keeps the run folder when it failed.
cleanup() {
    local status=$?
    stop_all "${SIM_PIDS[@]}"
    stop_all "${NODE_PIDS[@]}"
    if [[ -n "$NS" ]]; then
        ip netns delete "$NS" || log "warning: could not delete network namespace $NS"
    fi
    [[ -z "$RUN_DIR" ]] || summarise_logs
    finish_run_dir "$status"
    exit "$status"
}

# The in-process simulation of SIM_NODES nodes, in the same namespace once the real nodes are
# gone (it reads the loopback counters itself); its lines get the machine appended.
run_simulation() {
    local line nodes dir
    for nodes in $SIM_NODES; do
        ((nodes > 0)) || continue
        log "simulation: $nodes nodes in one process..."
        dir="$RUN_DIR/mesh-sim-$nodes"
        mkdir -p "$dir"
        in_ns env RUST_LOG=warn "$(release_dir)/mesh_sim" "$dir/data" --nodes "$nodes" \
            --loaded "$((LOADED < nodes ? LOADED : nodes))" --meters "$METERS_PER_SIM" \
            --window "$SIM_WINDOW" --settle "$SIM_SETTLE" >"$dir/out" 2>"$dir/log" || {
            tail -n 20 "$dir/log" >&2
            die "the simulation of $nodes nodes failed; see $dir/log"
        }
        rm -rf "$dir/data"
        while IFS= read -r line; do
            emit "$line"
        done <"$dir/out"
    done
}

# Global answers from views of 100 and 1,000 nodes, with many and with few top meters each.
run_view_bench() {
    local nodes top
    for nodes in 100 1000; do
        for top in 100 3; do
            emit "$("$(release_dir)/view_bench" --nodes "$nodes" --top "$top")" || die "view_bench failed"
        done
    done
}

main() {
    local started first_start deadline out meters
    started="$(date +%s)"
    unset_hydromesh_env
    check_args
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    build
    describe_machine
    make_run_dir
    make_namespace
    SAMPLE=(1 "$(((NODES + 1) / 2))" "$NODES")

    log "starting $NODES nodes in waves of $WAVE..."
    first_start="$(date +%s)"
    deadline=$((first_start + CONVERGE_TIMEOUT_S))
    start_mesh "$deadline"
    log "all $NODES nodes started in $(($(date +%s) - first_start))s; waiting for fog-${SAMPLE[0]}, fog-${SAMPLE[1]} and fog-${SAMPLE[2]} to include all $NODES..."
    wait_converged "$deadline" "$first_start"
    log "converged $(($(date +%s) - first_start))s after the first node started"

    log "idle: settling for ${SETTLE_S}s..."
    sleep "$SETTLE_S"
    measure_window
    emit "$(printf '{"bench":"scale_idle",%s}' "$(window_fields)")"

    start_simulators
    log "loaded: settling for ${SETTLE_S}s..."
    sleep "$SETTLE_S"
    check_sims_alive
    measure_window
    check_sims_alive
    # What the mesh itself counts, asked of the middle node.
    out="$(stats_of "${SAMPLE[1]}")"
    meters="$(json_number meters "$out")"
    [[ -n "$meters" ]] || die "fog-${SAMPLE[1]} did not answer stats after the loaded window; logs in $RUN_DIR"
    ((meters == LOADED * METERS_PER_SIM)) ||
        log "warning: fog-${SAMPLE[1]} counts $meters meters, $((LOADED * METERS_PER_SIM)) are simulated"
    emit "$(printf '{"bench":"scale_loaded",%s,"loaded_nodes":%s,"meters_reporting":%s}' \
        "$(window_fields)" "$LOADED" "$meters")"

    log "checking that the loaded mesh still includes every node and meter..."
    first_start="$(date +%s)"
    wait_converged $((first_start + RECHECK_TIMEOUT_S)) "$first_start" $((LOADED * METERS_PER_SIM))
    # The log summary reads the nodes' logs at exit; the processes go now.
    stop_all "${SIM_PIDS[@]}"
    stop_all "${NODE_PIDS[@]}"
    run_simulation
    run_view_bench
    log "done in $(($(date +%s) - started)) s"
}

main "$@"
