# Sourced by bench/run.sh, compare.sh, peers.sh and run-cluster.sh, with their arguments: the
# peroxo binary, a temporary directory, and the processes of one benchmark run.
#
# Without arguments, prints the calling script's opening comment and exits 64. Sets `runs`
# (RUNS, default 3), PEROXO_BIN (building target/release/peroxo unless it is given) and `work`,
# a new temporary directory.
# - `start NAME COMMAND…` starts a process in the background, logging to $work/NAME-$run.log;
#   `wait_for NAME COMMAND…` waits until COMMAND succeeds while the process last started runs;
#   `stop_processes` stops every process started with SIGTERM, the last started first, and
#   waits for each.
# - `measure OUT LABEL ARGS…` runs `peroxo bench ARGS… --json` into OUT, and on failure says so
#   and sets `status` to 1. When the run has one process (the server), the report gains
#   `server`: the bytes that process wrote to storage (`write_bytes` of /proc/PID/io) and the
#   CPU it used, in all and per message acked.
# - `listening PORT` succeeds when something accepts TCP connections on 127.0.0.1:PORT.
# - `cpu_ticks PID` prints a process's CPU time so far, in clock ticks (utime plus stime:
#   fields 14 and 15 of /proc/PID/stat, after a command name without spaces).
# On exit `stop_run` is called (`stop_processes` unless the script defines its own), and $work
# is removed unless KEEP is set.

if [ $# -eq 0 ]; then
  sed -n '2,/^[^#]/p' "$0" | sed -n 's/^# \{0,1\}//p'
  exit 64
fi
runs=${RUNS:-3}

if [ -z "${PEROXO_BIN:-}" ]; then
  echo "== cargo build --release" >&2
  cargo build --release >&2
  PEROXO_BIN=target/release/peroxo
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/peroxo-bench.XXXXXX")
# The processes of the current run by name, in start order.
names=()
pids=()

start() {
  local name=$1
  shift
  "$@" >"$work/$name-$run.log" 2>&1 &
  names+=("$name")
  pids+=($!)
}

# Gives up after 30 s, or as soon as the process exits, printing its log.
wait_for() {
  local name=$1 pid=${pids[-1]}
  shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; its log:" >&2
      cat "$work/$name-$run.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "$name was not ready within 30 s ($*)" >&2
  exit 1
}

measure() {
  local out=$1 label=$2
  shift 2
  echo "== $label: peroxo bench $*" >&2
  if ! "$PEROXO_BIN" bench "$@" --json >"$out"; then
    echo "   $label failed" >&2
    status=1
  fi
  # Only a server still running, and a report that is JSON (a run that failed early may have
  # left neither).
  if [ ${#pids[@]} -eq 1 ] && [ -r "/proc/${pids[0]}/io" ] && jq -e . "$out" >/dev/null 2>&1; then
    local pid=${pids[0]} bytes report
    bytes=$(awk '$1 == "write_bytes:" {print $2}' "/proc/$pid/io")
    report=$(jq --argjson bytes "$bytes" --argjson ticks "$(cpu_ticks "$pid")" \
      --argjson hz "$(getconf CLK_TCK)" '
      .server = {write_bytes: $bytes, cpu_secs: ($ticks / $hz)}
      | if (.messages.acked // 0) > 0 then .server += {
          write_bytes_per_ack: ($bytes / .messages.acked | floor),
          cpu_us_per_ack: ($ticks / $hz * 1e6 / .messages.acked | floor)} else . end' "$out")
    echo "$report" >"$out"
  fi
}

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cpu_ticks() {
  local fields
  read -ra fields <"/proc/$1/stat"
  echo $((fields[13] + fields[14]))
}

stop_processes() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      kill -TERM "${pids[$i]}"
      wait "${pids[$i]}" || true
    fi
  done
  names=()
  pids=()
}

stop_run() {
  stop_processes
}

cleanup() {
  stop_run
  if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "== kept $work" >&2; fi
}
trap cleanup EXIT
