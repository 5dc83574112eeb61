#!/usr/bin/env bash
# Benchmarks of hydromesh on this machine, machine-readable: one JSON object per line per figure
# on stdout, progress on stderr.
#
#   ingest          1,000,000 readings of 10,000 meters through `hydromesh ingest` into one node
#                   (durable acknowledgements), and the node's bytes on disk per reading
#   sled_baseline   the same readings written straight into sled (bench/src/bin/sled_baseline.rs)
#   ingest_vs_sled  ingest readings/s divided by sled's
#   store_year_read one meter's year of 15-minute readings read back from the store, and its
#                   bytes on disk per reading (bench/src/bin/store_bench.rs)
#   store_fill, store_restart, store_loaded   a node started on a store of 100k, then 1M
#                   meters: start to first answer and resident memory on the store alone, after
#                   a clean stop, and after a crash while a third of the meters reported again;
#                   resident memory while it took those readings (STORE_METERS sets the counts)
#   crash           a node killed (SIGKILL) 100 times at random moments, during start-up and
#                   ingest, then every acknowledged reading checked (bench/src/bin/crash_bench.rs)
#   convergence     ack at the first node of a 5-node chain to the new top-10 at the last
#                   (bench/src/bin/convergence.rs)
#   query           wall time of `hydromesh query top` as a fresh process, 30 runs
#   cap_crossing    a reading over the cap to the acknowledgement that closes the valve
#   cap_policy      a cap set through the first node to the first valve closed on the last
#   follow_*        a reading acknowledged by its home to a follower attached to another node
#                   (bench/src/bin/rules_latency.rs)
#   mqtt_ingest     MQTT QoS 1 readings/s into a node (PUBACK once durable), mosquitto_relay the
#                   same messages through a plain mosquitto, and their ratio (bench/src/bin/mqtt_bench.rs)
#   http_top        GET /api/v1/top latency at 1,000 requests/s (bench/src/bin/http_latency.rs)
#   idle_connections  10,000 TCP connections to a node's libp2p port that send nothing, then
#                   `hydromesh query stats` processes: their wall time, and the node's memory
#   stalled_streams 4 peers x 64 sync streams, each sending just under the 16 MiB limit and
#                   stalling: the node's peak memory, and a query's time after
#                   (bench/src/bin/stall_bench.rs)
#   http_slowloris  1,100 connections each sending a byte of a request a second, opened again
#                   when closed, while a client asks GET /api/v1/stats on a new connection
#                   every 200 ms: its answer times
#   overload        8 HTTP clients offering 12x what one sustains: goodput, ack latency,
#                   questions meanwhile, memory (bench/src/bin/overload_bench.rs)
#   overload_cli    8 `hydromesh ingest` processes at once into one node: all stored, readings/s
#   partition_heal  4 nodes in network namespaces: a partition, a restart while cut off, the heal
#                   (scripts/partition.sh, ~2 minutes, root; SKIP_SCALE=1 skips it with the next)
#   scale_*, mesh_sim_*   100 real nodes, then 20 and 100 in one process: traffic, CPU,
#                   convergence and query times at scale (scripts/scale.sh, ~12 minutes, root;
#                   SKIP_SCALE=1 skips)
#   mesh_sim_* at 1,000 nodes   traffic and CPU of a thousand nodes in two processes, timers
#                   slowed 10x (scripts/scale-large.sh, 30 to 60 minutes, root; only with PARTS=large)
#
# PARTS chooses what runs (default: all but `large`): `storage` (ingest to crash), `mqtt`,
# `abuse` (idle_connections to http_slowloris), `overload` (overload, overload_cli),
# `chain` (convergence to http_top), `mesh` (partition_heal, scale_*, mesh_sim_*), `large`
# (1,000 nodes); e.g. `PARTS="storage" scripts/bench.sh`.
#
# Works in run/bench-YYYYmmdd-HHMMSS/ under the repository, removed at the end unless the run
# failed or KEEP_RUN=1. Every process it starts is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
READINGS=1000000
METERS=10000
# Meters of the stores a node is started on (bench_restart).
STORE_METERS="${STORE_METERS:-100000 1000000}"
CHAIN_NODES=5
QUERY_RUNS=30
ADDRS_TIMEOUT_S=30
READY_TIMEOUT_S=60
STOP_TIMEOUT_S=10
PARTS="${PARTS:-storage mqtt chain abuse overload mesh}"

RUN_DIR=""
BIN=""
DRIVERS=""
ADMIN_KEY=""
ADMIN_PUBKEY=""
MACHINE=""
# Pids of every process started, in start order.
PIDS=()
FAILED=0

log() { printf '[bench] %s\n' "$*" >&2; }

build() {
    log "building hydromesh and the benchmark drivers (release)..."
    (cd "$ROOT" && cargo build --release -p hydromesh -p hydromesh-bench --bins)
    BIN="$(release_dir)/hydromesh"
    DRIVERS="$(release_dir)"
    [[ -x "$BIN" ]] || die "cargo finished but $BIN is missing"
}

make_run_dir() {
    RUN_DIR="$(new_run_dir bench)"
    log "run folder: $RUN_DIR"
}

now_ns() { date +%s%N; }

# Stops PID and forgets it, so that the exit trap never signals a recycled pid.
stop_pid() {
    local pid="$1" kept=() p
    terminate "$pid"
    for p in "${PIDS[@]}"; do
        [[ "$p" == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

# Resident memory of process PID, bytes.
rss_bytes() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }

# Milliseconds since START (from now_ns), one decimal.
ms_since() { awk -v ns=$(($(now_ns) - $1)) 'BEGIN { printf "%.1f", ns / 1e6 }'; }

# Starts a fog node NAME with its data, log and pid under the run folder; extra args follow.
start_node() {
    local name="$1"
    shift
    RUST_LOG=info "$BIN" node --data-dir "$RUN_DIR/$name" --listen /ip4/127.0.0.1/tcp/0 \
        --http 127.0.0.1:0 --mqtt off --name "$name" "$@" </dev/null >"$RUN_DIR/$name.log" 2>&1 &
    PIDS+=("$!")
    printf '%s\n' "$!" >"$RUN_DIR/$name.pid"
}

# Prints bench node NAME's first dialable address once it has written it.
bench_addr() {
    node_addr "$1" "$RUN_DIR/$1" "$RUN_DIR/$1.pid" "$RUN_DIR/$1.log"
}

# Median (mean of the two middle values for an even count) and p90 (nearest rank) of the
# numbers on stdin, as `"median_ms":X,"p90_ms":Y,"min_ms":A,"max_ms":B`.
summarise_ms() {
    sort -n | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { exit 1 }
            median = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            rank = int(0.9 * NR); if (rank < 0.9 * NR) rank++
            printf "\"median_ms\":%.1f,\"p90_ms\":%.1f,\"min_ms\":%.1f,\"max_ms\":%.1f", median, v[rank], v[1], v[NR]
        }'
}

# a. 1M readings, hour by hour for 100 hours ending yesterday 23:00 UTC, increasing registers,
# flow in L/h so that the node stores the same 13-byte values as the sled baseline.
generate_csv() {
    local file="$1" now last_ms first_ms hours=$((READINGS / METERS))
    now="$(date +%s)"
    last_ms=$(((now - now % 86400 - 3600) * 1000))
    first_ms=$((last_ms - (hours - 1) * 3600000))
    awk -v meters="$METERS" -v hours="$hours" -v first="$first_ms" 'BEGIN {
        srand(42)
        print "meter,ts,litres,flow_lph"
        for (m = 0; m < meters; m++) { reg[m] = int(rand() * 1000000); rate[m] = 1 + int(rand() * 40) }
        for (h = 0; h < hours; h++) {
            ts = first + h * 3600000
            for (m = 0; m < meters; m++) {
                use = int(rand() * 2 * rate[m])
                reg[m] += use
                # %.0f: some awks print large integers with %d as 2147483647.
                printf "%d,%.0f,%.0f,%d\n", 100000 + m, ts, reg[m], use
            }
        }
    }' >"$file"
}

INGEST_RPS=""

bench_ingest() {
    local csv="$RUN_DIR/readings.csv" addr start end out accepted seconds rps bytes pid
    log "generating $READINGS readings of $METERS meters..."
    generate_csv "$csv"
    start_node ingest-node
    pid="${PIDS[-1]}"
    addr="$(bench_addr ingest-node)"
    log "ingesting into $addr..."
    start="$(now_ns)"
    # A generous ack timeout: a group commit of many batches may take longer than the default.
    out="$("$BIN" ingest --peer "$addr" --timeout 60s --json "$csv")" || die "ingest failed: $out"
    end="$(now_ns)"
    accepted="$(json_number accepted "$out")"
    [[ "$accepted" == "$READINGS" ]] || die "the node accepted $accepted of $READINGS readings: ${out:0:500}"
    # Stop the node cleanly first so that the database is flushed and closed when measured.
    stop_pid "$pid"
    bytes="$(du -sb "$RUN_DIR/ingest-node/db" | cut -f1)"
    seconds="$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')"
    rps="$(awk -v n="$READINGS" -v ns=$((end - start)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }')"
    INGEST_RPS="$rps"
    emit "$(printf '{"bench":"ingest","readings":%s,"meters":%s,"seconds":%s,"readings_per_s":%s,"bytes_on_disk":%s,"bytes_per_reading":%s}' \
        "$READINGS" "$METERS" "$seconds" "$rps" "$bytes" \
        "$(awk -v b="$bytes" -v n="$READINGS" 'BEGIN { printf "%.1f", b / n }')")"
    # The CSV is no longer needed and is the largest file of the run.
    rm -f "$csv"
}

# b. Plain sled on the same machine, same readings count, and the ratio.
bench_sled() {
    local out sled_rps
    log "sled baseline: $READINGS readings, flush every 1,000..."
    out="$("$DRIVERS/sled_baseline" "$RUN_DIR/sled-baseline" "$READINGS" "$METERS")" ||
        die "sled_baseline failed"
    emit "$out"
    sled_rps="$(json_number readings_per_s "$out")"
    [[ -n "$sled_rps" ]] || die "no readings_per_s in: $out"
    emit "$(printf '{"bench":"ingest_vs_sled","ingest_readings_per_s":%s,"sled_readings_per_s":%s,"ratio":%s}' \
        "$INGEST_RPS" "$sled_rps" "$(awk -v a="$INGEST_RPS" -v b="$sled_rps" 'BEGIN { printf "%.3f", a / b }')")"
    rm -rf "$RUN_DIR/sled-baseline"
}

# c. The store itself: one meter's year read back; a node started on a store of many meters.
bench_store() {
    local out meters
    log "store: a year of one meter's 15-minute readings, read back..."
    out="$("$DRIVERS/store_bench" year "$RUN_DIR/store-year")" || die "store_bench year failed"
    emit "$out"
    rm -rf "$RUN_DIR/store-year"
    for meters in $STORE_METERS; do
        bench_restart "$meters"
    done
}

# A node started on a store of METERS meters (2 readings each): start to first answer, and its
# resident memory once answering.
bench_restart() {
    # A clean stop right after start-up finishes judging every meter, then saves their state:
    # seconds with a million meters.
    local meters="$1" name="restart-$1" out pid how STOP_TIMEOUT_S=60
    log "store: a node holding $meters meters..."
    mkdir -p "$RUN_DIR/$name"
    out="$("$DRIVERS/store_bench" fill "$RUN_DIR/$name/db" "$meters" 2)" || die "store_bench fill failed"
    emit "$out"
    # First on the store alone (every meter's rule state rebuilt from its readings), then again
    # after a clean stop (the state the node saved at its stop read back).
    for how in rebuilt saved; do
        time_start "$name" "$meters" "$how"
        stop_pid "${PIDS[-1]}"
    done
    # Then a third of the meters report again (an hour after store_bench's last reading):
    # resident memory of the node holding them all while it takes readings; then a crash, and
    # the start after it, which rebuilds the meters changed since the state was last saved.
    local csv="$RUN_DIR/$name.csv" addr
    awk -v n="$meters" 'BEGIN {
        print "meter,ts,litres"
        for (m = 0; m < n; m += 3) printf "%d,1704074400000,1000100\n", 100000 + m
    }' >"$csv"
    rm -f "$RUN_DIR/$name/addrs"
    start_node "$name"
    pid="${PIDS[-1]}"
    addr="$(bench_addr "$name")"
    out="$("$BIN" ingest --peer "$addr" --timeout 60s --json "$csv")" || die "ingest failed: $out"
    emit "$(printf '{"bench":"store_loaded","meters":%s,"readings":%s,"rss_bytes":%s}' \
        "$meters" "$(json_number accepted "$out")" "$(rss_bytes "$pid")")"
    kill -KILL "$pid"
    stop_pid "$pid"
    time_start "$name" "$meters" crashed
    stop_pid "${PIDS[-1]}"
    rm -rf "${RUN_DIR:?}/$name" "$csv"
}

# Starts the node NAME on its store and prints its start to first answer and resident memory.
time_start() {
    local name="$1" meters="$2" how="$3" start end pid addr deadline rss
    rm -f "$RUN_DIR/$name/addrs"
    start="$(now_ns)"
    start_node "$name"
    pid="${PIDS[-1]}"
    addr="$(bench_addr "$name")"
    deadline=$(($(date +%s) + READY_TIMEOUT_S))
    until "$BIN" query --peer "$addr" --timeout 2s --json stats >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || die "the node on $meters meters did not answer within ${READY_TIMEOUT_S} s"
        sleep 0.05
    done
    end="$(now_ns)"
    rss="$(rss_bytes "$pid")"
    emit "$(printf '{"bench":"store_restart","meters":%s,"state":"%s","start_to_answer_s":%s,"rss_bytes":%s}' \
        "$meters" "$how" "$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }')" "$rss")"
}

# d. A node killed with SIGKILL 100 times at random moments while it ingests, then every
# acknowledged reading checked.
bench_crash() {
    local out
    log "crash: 100 kills at random moments, then every acknowledged reading checked..."
    out="$("$DRIVERS/crash_bench" "$BIN" "$RUN_DIR/crash" 100)" || die "crash_bench failed: $out"
    emit "$out"
    rm -rf "${RUN_DIR:?}/crash"
}

CHAIN_ADDRS=()

# Whether node ADDR sees N live nodes.
sees_all() {
    local out
    out="$("$BIN" query --peer "$1" --timeout 2s --json peers 2>/dev/null)" || return 1
    [[ "$(json_number nodes "$out")" == "$2" && "$(json_number stale_nodes "$out")" == "0" ]]
}

# A chain of N nodes, each bootstrapping only to the one before, as scripts/mesh.sh starts them;
# returns once every node sees all N.
start_chain() {
    local n="$1" i bootstrap=() deadline ready
    for ((i = 1; i <= n; i++)); do
        start_node "chain-$i" --republish 10s --admin-pubkey "$ADMIN_PUBKEY" "${bootstrap[@]}"
        CHAIN_ADDRS+=("$(bench_addr "chain-$i")")
        bootstrap=(--bootstrap "${CHAIN_ADDRS[-1]}")
    done
    log "waiting for the $n-node chain to see itself whole..."
    deadline=$(($(date +%s) + READY_TIMEOUT_S))
    while :; do
        ready=1
        for ((i = 0; i < n; i++)); do
            sees_all "${CHAIN_ADDRS[i]}" "$n" || {
                ready=0
                break
            }
        done
        ((ready)) && return 0
        (($(date +%s) < deadline)) || die "the chain did not form within ${READY_TIMEOUT_S}s; logs in $RUN_DIR"
        sleep 0.5
    done
}

# c. First node's ack to the last node's top-10.
bench_convergence() {
    local out
    log "convergence over the chain..."
    if out="$("$DRIVERS/convergence" "${CHAIN_ADDRS[0]}" "${CHAIN_ADDRS[-1]}")"; then
        emit "$out"
    else
        # Still report what was measured; the run fails at the end.
        [[ -n "$out" ]] && emit "$out"
        log "convergence: some rounds did not converge"
        FAILED=1
    fi
}

# d. A user's query: process start, connection, answer, exit.
bench_query() {
    local addr="${CHAIN_ADDRS[-1]}" i start end samples=""
    log "query top, $QUERY_RUNS runs as separate processes..."
    for ((i = 0; i < QUERY_RUNS; i++)); do
        start="$(now_ns)"
        "$BIN" query --peer "$addr" top >/dev/null || die "query top failed against $addr"
        end="$(now_ns)"
        samples+="$(awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e6 }')"$'\n'
    done
    emit "$(printf '{"bench":"query","runs":%s,"nodes":%s,%s}' \
        "$QUERY_RUNS" "$CHAIN_NODES" "$(printf '%s' "$samples" | summarise_ms)")"
}

# e. Rationing cuts and live follow, between the chain's first and last nodes.
bench_rules() {
    local out line
    log "rationing cuts and live follow..."
    if ! out="$("$DRIVERS/rules_latency" "${CHAIN_ADDRS[0]}" "${CHAIN_ADDRS[-1]}" "$ADMIN_KEY")"; then
        log "rules_latency failed"
        FAILED=1
    fi
    while IFS= read -r line; do
        [[ -n "$line" ]] && emit "$line"
    done <<<"$out"
}

# f. MQTT QoS 1 ingest (durable PUBACKs) against a plain mosquitto relay (bench/src/bin/mqtt_bench.rs).
# Before the chain starts, so that its nodes do not load the machine. Its lines carry "machine".
bench_mqtt() {
    log "MQTT: 200,000 QoS 1 readings into a node, then through mosquitto..."
    "$DRIVERS/mqtt_bench" "$RUN_DIR/mqtt-bench" || die "mqtt_bench failed"
    rm -rf "$RUN_DIR/mqtt-bench"
}

# g. GET /api/v1/top at 1,000 requests/s against the chain's last node (bench/src/bin/http_latency.rs).
bench_http() {
    local addr
    addr="$(head -n 1 "$RUN_DIR/chain-$CHAIN_NODES/http")"
    log "HTTP: GET http://$addr/api/v1/top at 1000 requests/s for 10 s..."
    "$DRIVERS/http_latency" --addr "$addr" || die "http_latency failed"
}

# Stops every process this run started, newest first; keeps the run folder when it failed.
cleanup() {
    local status=$? i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        terminate "${PIDS[i]}"
    done
    finish_run_dir "$status"
    exit "$status"
}

# 10,000 TCP connections to a node's libp2p port that send nothing (held by a Python process),
# then 20 `hydromesh query stats` processes, all within the 10 s those connections take to time
# out: how long each took, and the node's resident memory while it holds them.
bench_idle_connections() {
    local name=idle-node addr port holder ready="$RUN_DIR/idle.ready" i start times=() rss
    log "abuse: 10,000 silent TCP connections, then clients..."
    start_node "$name"
    addr="$(bench_addr "$name")"
    port="$(sed -n 's#^/ip4/127.0.0.1/tcp/\([0-9]*\)/.*#\1#p' <<<"$addr")"
    [[ -n "$port" ]] || die "no TCP port in $addr"
    python3 - "$port" 10000 "$ready" <<'PY' &
import socket, sys, time
port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
open(ready, "w").write(str(len(held)))
time.sleep(30)
PY
    holder=$!
    until [[ -s "$ready" ]]; do
        is_alive "$holder" || die "the connection holder failed"
        sleep 0.05
    done
    for ((i = 0; i < 20; i++)); do
        start="$(now_ns)"
        "$BIN" query --peer "$addr" --timeout 5s --json stats >/dev/null || die "query $i failed with 10,000 silent connections"
        times+=("$(ms_since "$start")")
    done
    rss="$(rss_bytes "${PIDS[-1]}")"
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    emit "$(printf '{"bench":"idle_connections","connections":10000,"queries":20,%s,"rss_bytes":%s}' \
        "$(printf '%s\n' "${times[@]}" | summarise_ms)" "$rss")"
    stop_pid "${PIDS[-1]}"
}

# 4 peers open 64 sync streams each, send just under the 16 MiB request limit on each and stall
# (4 GiB attempted) for 8 s: the node's peak resident memory meanwhile (sampled every 0.2 s),
# then how long a query takes.
bench_stalled_streams() {
    local name=stall-node addr pid driver out peak=0 rss start
    log "abuse: stalled sync streams..."
    start_node "$name"
    pid="${PIDS[-1]}"
    addr="$(bench_addr "$name")"
    "$DRIVERS/stall_bench" "$addr" 4 64 8 >"$RUN_DIR/stall.json" &
    driver=$!
    while is_alive "$driver"; do
        rss="$(rss_bytes "$pid")"
        ((rss > peak)) && peak="$rss"
        sleep 0.2
    done
    wait "$driver" || die "stall_bench failed"
    out="$(cat "$RUN_DIR/stall.json")"
    start="$(now_ns)"
    "$BIN" query --peer "$addr" --timeout 5s --json stats >/dev/null || die "the node did not answer after the stalled streams"
    emit "$(printf '%s,"node_peak_rss_bytes":%s,"query_after_ms":%s}' "${out%\}}" "$peak" \
        "$(ms_since "$start")")"
    stop_pid "$pid"
}

# Prints bench node NAME's HTTP address once it serves HTTP.
bench_http_addr() {
    local file="$RUN_DIR/$1/http" i
    bench_addr "$1" >/dev/null
    for ((i = 0; i < ADDRS_TIMEOUT_S * 20; i++)); do
        [[ -s "$file" ]] && { head -n 1 "$file"; return; }
        sleep 0.05
    done
    die "node $1 wrote no HTTP address"
}

# Overload of HTTP ingest (bench/src/bin/overload_bench.rs): what one client sustains posting
# batches of 1,000 readings, then 8 clients offering 12 times that for 20 s, on a fresh node
# each time: with 16 connections per client, then 64 (more requests at once than the ingest
# queue holds and its waiters are served within the node's patience: some are answered 503),
# each with clients that ignore Retry-After (a refused batch is dropped) and clients that honour
# it. Goodput, acknowledgement latency, questions answered meanwhile, peak memory; the node's
# count of accepted readings must equal the readings acknowledged.
bench_overload() {
    local connections variant name pid addr out
    for connections in 16 64; do
        for variant in "" --honour-retry-after; do
            name="overload-$connections${variant:+-honour}"
            log "abuse: overload of HTTP ingest at 12x, $connections connections a client ${variant:-(Retry-After ignored)}..."
            start_node "$name"
            pid="${PIDS[-1]}"
            addr="$(bench_http_addr "$name")"
            out="$("$DRIVERS/overload_bench" --addr "$addr" --pid "$pid" --connections "$connections" $variant)" ||
                die "overload_bench failed"
            [[ "$(json_number acked_readings_total "$out")" == "$(json_number node_accepted_readings "$out")" ]] ||
                die "acknowledged and accepted readings differ: $out"
            emit "$(printf '{"bench":"overload","connections_a_client":%s,%s' "$connections" "${out#\{\"bench\":\"overload\",}")"
            stop_pid "$pid"
            rm -rf "${RUN_DIR:?}/$name"
        done
    done
}

# Overload through libp2p: 8 `hydromesh ingest` processes at once, 200,000 new readings each
# (5,000 meters x 40 minutes), into one node: each must store all its readings (a busy node
# tells them to send again; none may time out). Their total readings/s.
bench_overload_cli() {
    local name=overload-cli addr pid c start ns procs=() accepted
    log "abuse: 8 hydromesh ingest processes at once..."
    for ((c = 0; c < 8; c++)); do
        awk -v c="$c" 'BEGIN {
            print "meter,ts,litres"
            for (r = 0; r < 40; r++) for (m = 0; m < 5000; m++)
                printf "%d,%.0f,%d\n", 2000000 + c * 10000 + m, 1767225600000 + r * 60000, 1000 + r * 10
        }' >"$RUN_DIR/cli-$c.csv"
    done
    start_node "$name"
    pid="${PIDS[-1]}"
    addr="$(bench_addr "$name")"
    start="$(now_ns)"
    for ((c = 0; c < 8; c++)); do
        "$BIN" ingest --peer "$addr" --json "$RUN_DIR/cli-$c.csv" >"$RUN_DIR/cli-$c.out" 2>&1 &
        procs+=("$!")
    done
    for ((c = 0; c < 8; c++)); do
        wait "${procs[c]}" || die "ingest process $c failed: $(tail -c 300 "$RUN_DIR/cli-$c.out")"
    done
    ns=$(($(now_ns) - start))
    for ((c = 0; c < 8; c++)); do
        accepted="$(json_number accepted "$(tail -n 1 "$RUN_DIR/cli-$c.out")")"
        [[ "$accepted" == 200000 ]] || die "ingest process $c had $accepted of 200000 readings stored"
    done
    emit "$(printf '{"bench":"overload_cli","processes":8,"readings":1600000,"seconds":%s,"readings_per_s":%s}' \
        "$(awk -v ns="$ns" 'BEGIN { printf "%.2f", ns / 1e9 }')" \
        "$(awk -v ns="$ns" 'BEGIN { printf "%.0f", 1600000 / (ns / 1e9) }')")"
    stop_pid "$pid"
    rm -rf "${RUN_DIR:?}/$name" "$RUN_DIR"/cli-*
}

# Slowloris on HTTP: 1,100 connections (more than the server's 1,024 slots) each send one byte
# of a request a second, and are opened again whenever the server closes them, for 20 s;
# meanwhile a client opens a new connection every 200 ms and asks GET /api/v1/stats: how long
# each answer took, and how many attacking connections the server closed.
bench_http_slowloris() {
    local name=slowloris-node addr out
    log "abuse: HTTP slowloris, 1,100 connections trickling a byte a second..."
    start_node "$name"
    addr="$(bench_http_addr "$name")"
    out="$(python3 - "$addr" <<'PY'
import json, socket, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1)
port, holders, seconds = int(port), 1100, 20
request = b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
def attacker(stop, counts):
    conns = []
    for _ in range(holders):
        conns.append([socket.create_connection((host, port)), 0])
    while not stop.is_set():
        for c in conns:
            try:
                c[0].send(request[c[1] % len(request):][:1])
                c[1] += 1
            except OSError:
                c[0].close()
                counts["reopened"] += 1
                try:
                    c[0], c[1] = socket.create_connection((host, port)), 0
                except OSError:
                    pass
        time.sleep(1)
counts, stop = {"reopened": 0}, threading.Event()
thread = threading.Thread(target=attacker, args=(stop, counts))
thread.start()
time.sleep(2)
times, errors, end = [], 0, time.time() + seconds
while time.time() < end:
    started = time.time()
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        if data.startswith(b"HTTP/1.1 200"):
            times.append((time.time() - started) * 1000)
        else:
            errors += 1
    except OSError:
        errors += 1
    time.sleep(max(0, 0.2 - (time.time() - started)))
stop.set()
thread.join()
times.sort()
pick = lambda p: round(times[min(len(times) - 1, int(p * len(times)))], 1) if times else 0
print(json.dumps({"holders": holders, "seconds": seconds, "queries": len(times), "errors": errors,
    "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(times[-1], 1) if times else 0,
    "holder_connections_closed": counts["reopened"]}))
PY
)" || die "the slowloris run failed"
    emit "{\"bench\":\"http_slowloris\",${out#\{}"
    stop_pid "${PIDS[-1]}"
}

# Whether PARTS names this part.
wanted() { [[ " $PARTS " == *" $1 "* ]]; }

main() {
    local started
    started="$(date +%s)"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    build
    describe_machine
    make_run_dir
    if wanted storage; then
        bench_ingest
        bench_sled
        bench_store
        bench_crash
    fi
    if wanted mqtt; then
        bench_mqtt
    fi
    if wanted chain; then
        ADMIN_KEY="$RUN_DIR/admin.key"
        ADMIN_PUBKEY="$("$BIN" keygen --out "$ADMIN_KEY" 2>/dev/null)" || die "cannot create an admin key"
        start_chain "$CHAIN_NODES"
        bench_convergence
        bench_query
        bench_rules
        bench_http
    fi
    if wanted abuse; then
        bench_idle_connections
        bench_stalled_streams
        bench_http_slowloris
    fi
    if wanted overload; then
        bench_overload
        bench_overload_cli
    fi
    if wanted mesh && [[ "${SKIP_SCALE:-0}" != 1 ]]; then
        # Their own nodes, namespaces and run folders; their lines join these.
        "$ROOT/scripts/partition.sh" || FAILED=1
        "$ROOT/scripts/scale.sh" || FAILED=1
    fi
    if wanted large; then
        "$ROOT/scripts/scale-large.sh" || FAILED=1
    fi
    log "done in $(($(date +%s) - started)) s"
    ((FAILED == 0)) || die "some benchmarks failed; see above"
}

main "$@"
