# shellcheck shell=bash
# Shell functions shared by scripts/mesh.sh and scripts/bench.sh (sourced, not run).
# Callers define ROOT (the repository), STOP_TIMEOUT_S, ADDRS_TIMEOUT_S, and log().

# Logs the error and exits with status 1.
die() {
    log "error: $*"
    exit 1
}

# Where cargo puts release artefacts: CARGO_TARGET_DIR if set (relative to ROOT, where cargo
# runs), else the repository's target/.
release_dir() {
    local target="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$target" in
        /*) ;;
        *) target="$ROOT/$target" ;;
    esac
    printf '%s/release\n' "$target"
}

# A new, unique folder run/PREFIX-YYYYmmdd-HHMMSS[-N] under the repository; prints its path.
new_run_dir() {
    local prefix="$1" stamp dir suffix=0
    stamp="$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$ROOT/run"
    dir="$ROOT/run/$prefix-$stamp"
    while ! mkdir "$dir" 2>/dev/null; do
        suffix=$((suffix + 1))
        dir="$ROOT/run/$prefix-$stamp-$suffix"
    done
    printf '%s\n' "$dir"
}

# Nanoseconds since the epoch.
now_ns() { date +%s%N; }

# At exit with STATUS: removes RUN_DIR (when set) after a successful run, unless KEEP_RUN=1;
# keeps it, and says where, after a failure.
finish_run_dir() {
    local status="$1"
    [[ -n "$RUN_DIR" ]] || return 0
    if ((status == 0)) && [[ "${KEEP_RUN:-0}" != 1 ]]; then
        rm -rf "$RUN_DIR"
    else
        log "run folder kept: $RUN_DIR"
    fi
}

# Whether PID is a live process; a zombie (exited, not yet reaped) counts as gone.
is_alive() {
    local pid="$1" stat
    kill -0 "$pid" 2>/dev/null || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != "Z" ]]
}

# SIGTERM, then up to STOP_TIMEOUT_S for a clean exit (a node flushes its store on SIGTERM),
# then SIGKILL.
terminate() {
    local pid="$1" deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$(($(date +%s) + STOP_TIMEOUT_S))
    while is_alive "$pid"; do
        if (($(date +%s) >= deadline)); then
            log "pid $pid still running after ${STOP_TIMEOUT_S}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    # Reap it if it is this shell's child; harmless otherwise.
    wait "$pid" 2>/dev/null || true
}

# The number after "KEY": in a one-line JSON answer (empty when absent). The leading quote keeps
# "nodes" from matching inside "stale_nodes".
json_number() {
    grep -o "\"$1\":[0-9.]*" <<<"$2" | head -n 1 | sed 's/.*://' || true
}

# Prints the first dialable address (one with /p2p/) a node wrote to its addrs file, waiting up to
# ADDRS_TIMEOUT_S; dies, showing the end of its log, if the node exits or writes none in time.
#   node_addr NAME DATA_DIR PID_FILE LOG_FILE
node_addr() {
    local name="$1" file="$2/addrs" pid_file="$3" log_file="$4" deadline addr
    deadline=$(($(date +%s) + ADDRS_TIMEOUT_S))
    while :; do
        if [[ -s "$file" ]]; then
            addr="$(head -n 1 "$file")"
            if [[ "$addr" == */p2p/* ]]; then
                printf '%s\n' "$addr"
                return 0
            fi
        fi
        if ! is_alive "$(cat "$pid_file")"; then
            log "--- last lines of $log_file ---"
            tail -n 20 "$log_file" >&2 || true
            die "$name exited; see $log_file"
        fi
        (($(date +%s) < deadline)) || die "$name wrote no address to $file within ${ADDRS_TIMEOUT_S}s; see $log_file"
        sleep 0.1
    done
}

# "2 cores, 23.5 GiB": what the figures were measured on, repeated in every line; sets MACHINE.
describe_machine() {
    local kib
    kib="$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)"
    MACHINE="$(nproc) cores, $(awk -v k="$kib" 'BEGIN { printf "%.1f GiB", k / 1048576 }')"
}

# Prints a JSON line on stdout with the machine appended (LINE is an object without it).
emit() {
    local line="$1"
    printf '%s,"machine":"%s"}\n' "${line%\}}" "$MACHINE"
}
