# Shared by bench/run and bench/auth (sourced, not run): logging, the
# process and temp dir bookkeeping (everything started is stopped by PID, on
# success, failure or Ctrl-C), small arithmetic helpers, CPU accounting and
# the random test data.
# The sourcing script sets BENCH_DIR first; it sets WORK (its temp dir) and
# appends every PID it starts to PIDS.

PY=(python3 "$BENCH_DIR/bench.py")

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- process and temp dir bookkeeping: everything started is stopped by PID ----
PIDS=()
WORK=""
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        # A child that exited stays a zombie (its PID cannot be reused) until
        # waited for; `ps` tells a zombie from a live process.
        [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$rc" != 0 ] && [ -n "${BENCH_KEEP_LOGS:-}" ]; then
            log "logs kept in $WORK/*.log"; find "$WORK" -type f ! -name '*.log' -delete
        else
            rm -rf "$WORK"
        fi
    fi
    [ "$rc" = 0 ] || log "failed (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mibps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1048576 }'; }
addf() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a + b }'; }

wait_for() { # seconds command...: retry until the command succeeds
    local t=$1 i; shift
    for i in $(seq $((t * 10))); do "$@" && return 0; sleep 0.1; done
    return 1
}

HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # utime + stime of a process
# CPU seconds of PID since TICKS0, per GiB of BYTES
cpu_per_gib() { awk -v t0="$2" -v t1="$(cpu_ticks "$1")" -v hz="$HZ" -v b="$3" 'BEGIN { printf "%.3f", (t1 - t0) / hz / (b / 1073741824) }'; }

# ---- test data: fresh random content (a fresh digest) for every upload ----
# Generated just before use and deleted after, to keep the page cache a run
# fills small; flushed to disk before the measures so that their writeback
# does not compete with them.
gen() { # name MiB...
    local name
    mkdir -p "$WORK/data"
    while [ $# -gt 0 ]; do
        name=$1
        log "generating $2 MiB of random data ($name)"
        "${PY[@]}" gen "$WORK/data/$name" $(($2 << 20)) >"$WORK/data/$name.digest"
        sync "$WORK/data/$name"
        shift 2
    done
}

# The machine and the client tools, as `key value` lines for the results file.
machine_facts() {
    local root=$1 commit
    echo "date $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc $(nproc)"
    echo "cpu $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel $(uname -r)"
    echo "mem $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$root" status --porcelain -- registry/src src identity/src Cargo.lock '*Cargo.toml' 2>/dev/null)" ]; then
        commit="$commit (with uncommitted changes)"
    fi
    echo "commit $commit"
}
