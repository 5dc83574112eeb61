#!/usr/bin/env bash
# The "partition" benchmark: a partition of real `hydromesh node` processes, and its heal.
# Machine-readable: one JSON object per line on stdout, progress on stderr.
#
#   partition_heal   four nodes, each in a network namespace of its own, joined by a bridge. Cut
#                    fog-1 and fog-3 off (each alone), ingest on both sides, restart fog-3 while it
#                    is cut off, then heal; the figure is the time from the heal until every
#                    node's `top 10` and `stats` are identical, exact (equal to what was ingested)
#                    and name no node stale, in seconds and in republish intervals. The run fails
#                    if, at any check during the partition, fog-2 or fog-4 (still connected to each
#                    other) reports the other stale, or if they do not report fog-1 and fog-3
#                    stale (coverage must be honest), or if the mesh has not healed within
#                    HEAL_TIMEOUT_S.
#
# The nodes use a short republish interval (PART_REPUBLISH_S, default 5 s; stale after 3.5 of
# them) so that the run takes about two minutes: the figure is stated in republish intervals.
# Needs root (ip netns) and jq (installed with apt when missing). Works in
# run/partition-YYYYmmdd-HHMMSS/ under the repository, removed at the end unless the run failed
# or KEEP_RUN=1. Every process it starts is stopped and every namespace deleted on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
REPUBLISH_S="${PART_REPUBLISH_S:-5}"
NODES=4
# The nodes cut off, each alone; the others stay connected to each other.
CUT=(1 3)
KEPT=(2 4)
METERS_PER_NODE=5
PORT=4001
SUBNET=10.77.0
ADDRS_TIMEOUT_S=30
STOP_TIMEOUT_S=10
FORM_TIMEOUT_S=60
HEAL_TIMEOUT_S=120
QUERY_TIMEOUT=3s

RUN_DIR=""
BIN=""
MACHINE=""
PREFIX="hm-part-$$"
NAMESPACES=()
# Node pids, index i-1 is fog-i.
NODE_PIDS=()
# meter -> litres consumed: what the mesh must answer once healed.
declare -A EXPECTED=()

log() { printf '[partition] %s\n' "$*" >&2; }

check_args() {
    [[ "$REPUBLISH_S" =~ ^[1-9][0-9]*$ ]] || die "PART_REPUBLISH_S must be a whole number of seconds, at least 1, got '$REPUBLISH_S'"
    ((EUID == 0)) || die "must run as root: each node runs in a network namespace of its own (ip netns); try: sudo $0"
    command -v ip >/dev/null || die "the ip command (iproute2) is missing"
    if ! command -v jq >/dev/null; then
        log "installing jq..."
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null; }; then
            die "jq is missing and could not be installed"
        fi
    fi
}

build() {
    log "building hydromesh (release)..."
    (cd "$ROOT" && cargo build --release -p hydromesh --bin hydromesh)
    BIN="$(release_dir)/hydromesh"
    [[ -x "$BIN" ]] || die "cargo finished but $BIN is missing"
}

ns_of() { printf '%s-%s\n' "$PREFIX" "$1"; }
addr_of() { printf '/ip4/%s.%s/tcp/%s\n' "$SUBNET" "$1" "$PORT"; }

# A bridge in a namespace of its own, and one namespace per node with a veth to the bridge.
make_network() {
    local br i
    br="$(ns_of br)"
    ip netns add "$br" || die "cannot create network namespace $br"
    NAMESPACES+=("$br")
    ip -n "$br" link add br0 type bridge
    ip -n "$br" link set br0 up
    for ((i = 1; i <= NODES; i++)); do
        ip netns add "$(ns_of "$i")" || die "cannot create network namespace $(ns_of "$i")"
        NAMESPACES+=("$(ns_of "$i")")
        ip link add "hm$$n$i" netns "$(ns_of "$i")" type veth peer name "port$i" netns "$br"
        ip -n "$(ns_of "$i")" link set lo up
        ip -n "$(ns_of "$i")" addr add "$SUBNET.$i/24" dev "hm$$n$i"
        ip -n "$(ns_of "$i")" link set "hm$$n$i" up
        ip -n "$br" link set "port$i" master br0
        ip -n "$br" link set "port$i" up
    done
    log "network: fog-1..fog-$NODES on $SUBNET.0/24, namespaces $PREFIX-*"
}

# Cuts fog-I off the bridge, or joins it back.
link() {
    ip -n "$(ns_of br)" link set "port$2" "$1"
}

# Starts fog-I in its namespace, bootstrapping to the addresses that follow.
start_node() {
    local i="$1" bootstrap=() addr
    shift
    for addr in "$@"; do
        bootstrap+=(--bootstrap "$addr")
    done
    # A restarted node writes its addresses again: wait for the new ones.
    rm -f "$RUN_DIR/fog-$i/addrs"
    RUST_LOG=warn ip netns exec "$(ns_of "$i")" "$BIN" node --data-dir "$RUN_DIR/fog-$i" \
        --listen "$(addr_of "$i")" --http off --mqtt off --name "fog-$i" --republish "${REPUBLISH_S}s" \
        "${bootstrap[@]}" </dev/null >>"$RUN_DIR/fog-$i.log" 2>&1 &
    NODE_PIDS[i - 1]="$!"
    printf '%s\n' "$!" >"$RUN_DIR/fog-$i.pid"
    node_addr "fog-$i" "$RUN_DIR/fog-$i" "$RUN_DIR/fog-$i.pid" "$RUN_DIR/fog-$i.log" >/dev/null
}

# fog-I's JSON answer to `query ARGS...`, asked from its own namespace (reachable when cut off);
# empty when it does not answer.
ask() {
    local i="$1"
    shift
    ip netns exec "$(ns_of "$i")" "$BIN" query --peer "$(addr_of "$i")" --timeout "$QUERY_TIMEOUT" --json "$@" 2>/dev/null || true
}

# Ingests METERS_PER_NODE meters into fog-I, each from 0 to a litres figure unique to the run, and
# records what the mesh must answer.
ingest_into() {
    local i="$1" round="$2" file="$RUN_DIR/readings-$1-$2.csv" k meter litres now
    now="$(date +%s%3N)"
    printf 'meter,ts,litres\n' >"$file"
    for ((k = 1; k <= METERS_PER_NODE; k++)); do
        meter=$((round * 1000 + i * 100 + k))
        litres=$((round * 10000 + i * 1000 + k * 37))
        printf '%s,%s,0\n%s,%s,%s\n' "$meter" $((now - 3600000)) "$meter" "$now" "$litres" >>"$file"
        EXPECTED[$meter]="$litres"
    done
    ip netns exec "$(ns_of "$i")" "$BIN" ingest --peer "$(addr_of "$i")" "$file" >/dev/null 2>>"$RUN_DIR/ingest.log" \
        || die "ingest into fog-$i failed; see $RUN_DIR/ingest.log"
}

# The expected answers, in the form `answers` prints.
expected_answers() {
    local meter total=0
    for meter in "${!EXPECTED[@]}"; do
        total=$((total + EXPECTED[$meter]))
    done
    printf '%s meters=%s total=%s\n' "$(for meter in "${!EXPECTED[@]}"; do printf '%s %s\n' "${EXPECTED[$meter]}" "$meter"; done \
        | sort -k1,1nr -k2,2n | head -n 10 | awk '{ printf "%s:%s,", $2, $1 }')" "${#EXPECTED[@]}" "$total"
}

# fog-I's answers in one line: its top 10 (meter:litres,...), meters and total, and STALE when it
# reports any node stale; empty when it does not answer.
answers() {
    local top stats
    top="$(ask "$1" top -n 10)"
    stats="$(ask "$1" stats)"
    [[ -n "$top" && -n "$stats" ]] || return 0
    printf '%s meters=%s total=%s%s\n' \
        "$(jq -r '[.entries[] | "\(.meter):\(.consumption_l)"] | join(",") + ","' <<<"$top")" \
        "$(jq -r .meters <<<"$stats")" "$(jq -r .total_consumption_l <<<"$stats")" \
        "$(jq -r 'if .stale_nodes > 0 then " STALE" else "" end' <<<"$stats")"
}

# The names of the nodes fog-I reports stale, space-separated ("?" when it does not answer).
stale_seen_by() {
    local out
    out="$(ask "$1" peers)"
    [[ -n "$out" ]] || { printf '?\n'; return 0; }
    jq -r '[.peers[] | select(.stale) | .name] | join(" ")' <<<"$out"
}

wait_formed() {
    local deadline=$(($(date +%s) + FORM_TIMEOUT_S)) i ok
    while :; do
        ok=1
        for ((i = 1; i <= NODES; i++)); do
            [[ "$(ask "$i" stats | jq -r '"\(.nodes) \(.stale_nodes)"' 2>/dev/null)" == "$NODES 0" ]] || ok=0
        done
        ((ok)) && return 0
        (($(date +%s) < deadline)) || die "the $NODES nodes did not all see each other within ${FORM_TIMEOUT_S}s; logs in $RUN_DIR"
        sleep 0.5
    done
}

# Whether every node answers EXPECTED, identically, with no node stale.
healed() {
    local want="$1" i
    for ((i = 1; i <= NODES; i++)); do
        [[ "$(answers "$i")" == "$want" ]] || return 1
    done
}

cleanup() {
    local status=$? pid ns
    for pid in "${NODE_PIDS[@]}"; do
        terminate "$pid"
    done
    for ns in "${NAMESPACES[@]}"; do
        ip netns delete "$ns" 2>/dev/null || true
    done
    finish_run_dir "$status"
    exit "$status"
}

main() {
    local i stale_after_s partition_s started cut_at heal_at healed_at violations=0 checks=0 want seen
    check_args
    describe_machine
    build
    RUN_DIR="$(new_run_dir partition)"
    trap cleanup EXIT
    make_network
    start_node 1
    start_node 2 "$(addr_of 1)"
    start_node 3 "$(addr_of 1)"
    start_node 4 "$(addr_of 3)"
    wait_formed
    for ((i = 1; i <= NODES; i++)); do
        ingest_into "$i" 1
    done
    want="$(expected_answers)"
    started="$(date +%s)"
    until healed "$want"; do
        (($(date +%s) - started < FORM_TIMEOUT_S)) || die "the mesh did not converge before the partition; logs in $RUN_DIR"
        sleep 0.5
    done
    log "formed and converged: $want"

    # Long enough for the cut nodes to go stale on the others (3.5 intervals), and some more.
    stale_after_s=$(((REPUBLISH_S * 7 + 1) / 2))
    partition_s=$((stale_after_s + 4 * REPUBLISH_S))
    log "cutting off fog-${CUT[0]} and fog-${CUT[1]} for ${partition_s}s"
    for i in "${CUT[@]}"; do
        link down "$i"
    done
    cut_at="$(date +%s)"
    # New readings on both sides of the cut, a restart of a cut-off node.
    ingest_into "${CUT[0]}" 2
    ingest_into "${KEPT[0]}" 2
    log "restarting fog-${CUT[1]} while it is cut off"
    terminate "${NODE_PIDS[CUT[1] - 1]}"
    start_node "${CUT[1]}" "$(addr_of 1)"
    ingest_into "${CUT[1]}" 2
    want="$(expected_answers)"
    while (($(date +%s) - cut_at < partition_s)); do
        for i in "${KEPT[@]}"; do
            seen="$(stale_seen_by "$i")"
            checks=$((checks + 1))
            if [[ "$seen" == "?" ]]; then
                log "fog-$i did not answer during the partition"
                violations=$((violations + 1))
            elif [[ " $seen " == *" fog-${KEPT[0]} "* || " $seen " == *" fog-${KEPT[1]} "* ]]; then
                log "fog-$i reports a node it is connected to stale: $seen"
                violations=$((violations + 1))
            fi
        done
        sleep 1
    done
    for i in "${KEPT[@]}"; do
        seen="$(stale_seen_by "$i")"
        [[ " $seen " == *" fog-${CUT[0]} "* && " $seen " == *" fog-${CUT[1]} "* ]] \
            || die "after ${partition_s}s cut off, fog-$i reports stale only: '$seen' (fog-${CUT[0]} and fog-${CUT[1]} expected)"
    done
    ((violations == 0)) || die "$violations of $checks checks during the partition failed; logs in $RUN_DIR"
    log "during the partition: $checks checks, no connected node reported stale, the cut-off ones reported stale"

    for i in "${CUT[@]}"; do
        link up "$i"
    done
    heal_at="$(now_ns)"
    log "healed; waiting for every node to answer: $want"
    until healed "$want"; do
        if (($(now_ns) - heal_at > HEAL_TIMEOUT_S * 1000000000)); then
            for ((i = 1; i <= NODES; i++)); do
                log "fog-$i answers: $(answers "$i")"
            done
            die "not healed ${HEAL_TIMEOUT_S}s after the partition ended; logs in $RUN_DIR"
        fi
        sleep 0.2
    done
    healed_at="$(now_ns)"
    emit "$(printf '{"bench":"partition_heal","nodes":%s,"cut_off":%s,"partition_s":%s,"republish_s":%s,"heal_s":%s,"heal_republish_intervals":%s,"checks_during_partition":%s,"connected_reported_stale":0}' \
        "$NODES" "${#CUT[@]}" "$partition_s" "$REPUBLISH_S" \
        "$(awk -v ns=$((healed_at - heal_at)) 'BEGIN { printf "%.1f", ns / 1e9 }')" \
        "$(awk -v ns=$((healed_at - heal_at)) -v r="$REPUBLISH_S" 'BEGIN { printf "%.2f", ns / 1e9 / r }')" \
        "$checks")"
}

main "$@"
