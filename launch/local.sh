#!/usr/bin/env bash
# Run one gpe_jax command as N processes on this machine, joined by jax.distributed over
# 127.0.0.1: the multi-host code path (per-process data, collectives across processes, orbax on
# every process) without a cluster. See README "Running on a pod or a cluster".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [--dry-run] [--module=MODULE] [--log_dir=DIR] N ARGS...

Starts N processes of `python -m MODULE ARGS...` (MODULE: gpe_jax.main, or $GPE_JAX_MODULE) on
127.0.0.1 with a free port, each given --coordinator_address, --num_processes=N and
--process_id=i. Each process sees GPE_JAX_LOCAL_DEVICES fake CPU devices (default 4;
0 = leave JAX_PLATFORMS / XLA_FLAGS / the accelerators as they are). Output of process i goes
to DIR/process_i.out (default DIR: WORKDIR/logs of the --workdir in ARGS, else ./launch_logs);
process 0's is also shown here. Waits for all; when one fails, stops the others and exits
with its status.

  --dry-run        print every command instead of running it
  --module=M       run `python -m M` (e.g. gpe_jax.experiments.fig3)
  --log_dir=DIR    where the per-process output goes
  -h, --help       this text

Environment: PYTHON (interpreter, default python3), GPE_JAX_LOCAL_DEVICES,
GPE_JAX_HEARTBEAT_TIMEOUT (default here 15 s), GPE_JAX_DISTRIBUTED_INIT_TIMEOUT (default
here 120 s), GPE_JAX_PORT (coordinator port; default: a free one; the next port is the
processes' own peer watch).

Example (2 processes x 4 CPU devices = the 8 devices of a 1-process test run):
  launch/local.sh 2 --config=configs/default.py:smoke --workdir=/tmp/mp \
      --config.stages="('encoder',)"
EOF
}

dry_run=0
module="${GPE_JAX_MODULE:-gpe_jax.main}"
log_dir=""
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --module=*) module="${1#*=}"; shift ;;
    --log_dir=*|--log-dir=*) log_dir="${1#*=}"; shift ;;
    --) shift; break ;;
    -*) echo "launch/local.sh: unknown option $1 (options come before N; -h for help)" >&2
        exit 2 ;;
    *) break ;;
  esac
done
if (($# < 1)) || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/local.sh: the first argument must be the number of processes N >= 1." >&2
  usage >&2
  exit 2
fi
n="$1"
shift
args=("$@")

python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || python=python

# The workdir in ARGS (the last --workdir wins), for the default log folder.
workdir=""
for a in "${args[@]+"${args[@]}"}"; do
  case "$a" in --workdir=*) workdir="${a#*=}" ;; esac
done
if [[ -z "$log_dir" ]]; then
  if [[ -n "$workdir" ]]; then log_dir="$workdir/logs"; else log_dir="launch_logs"; fi
fi

# A free port whose successor (the peer watch) is free too.
free_port() {
  "$python" - <<'PY'
import socket
for _ in range(50):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  if port >= 65535:
    continue
  try:
    with socket.socket() as t:
      t.bind(("127.0.0.1", port + 1))
  except OSError:
    continue
  print(port)
  break
PY
}
port="${GPE_JAX_PORT:-$(free_port)}"
[[ -n "$port" ]] || { echo "launch/local.sh: found no free port on 127.0.0.1" >&2; exit 1; }

devices="${GPE_JAX_LOCAL_DEVICES:-4}"
env_args=("GPE_JAX_HEARTBEAT_TIMEOUT=${GPE_JAX_HEARTBEAT_TIMEOUT:-15}"
          "GPE_JAX_DISTRIBUTED_INIT_TIMEOUT=${GPE_JAX_DISTRIBUTED_INIT_TIMEOUT:-120}")
if [[ "$devices" != "0" ]]; then
  [[ "$devices" =~ ^[1-9][0-9]*$ ]] || {
    echo "launch/local.sh: GPE_JAX_LOCAL_DEVICES=$devices must be a count (0 = leave as is)" >&2
    exit 2; }
  # any device count already in XLA_FLAGS is replaced, not stacked
  xla_flags="$(printf '%s' "${XLA_FLAGS:-}" |
               sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g; s/^ +| +$//g')"
  env_args+=("JAX_PLATFORMS=cpu"
             "XLA_FLAGS=${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$devices")
fi

commands=()
for ((i = 0; i < n; i++)); do
  cmd=(env "${env_args[@]}" "$python" -m "$module" "${args[@]+"${args[@]}"}"
       "--coordinator_address=127.0.0.1:$port" "--num_processes=$n" "--process_id=$i")
  commands+=("$(printf '%q ' "${cmd[@]}")> $(printf '%q' "$log_dir/process_$i.out") 2>&1")
done

if ((dry_run)); then
  echo "mkdir -p $(printf '%q' "$log_dir")"
  for c in "${commands[@]}"; do echo "$c &"; done
  echo "wait   # all $n; if one fails, the others are stopped (SIGTERM, then SIGKILL)"
  exit 0
fi

mkdir -p "$log_dir"
pids=()
tail_pid=""
stop_all() {   # SIGTERM to the processes still running; SIGKILL to those left after 10 s
  local sig_sent=0 p
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null || true; sig_sent=1; fi
  done
  if ((sig_sent)); then
    for _ in $(seq 100); do
      local alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  [[ -z "$tail_pid" ]] || kill "$tail_pid" 2>/dev/null || true
}
trap 'echo "launch/local.sh: interrupted; stopping the processes" >&2; stop_all; exit 130' INT TERM

for ((i = 0; i < n; i++)); do
  cmd=(env "${env_args[@]}" "$python" -m "$module" "${args[@]+"${args[@]}"}"
       "--coordinator_address=127.0.0.1:$port" "--num_processes=$n" "--process_id=$i")
  "${cmd[@]}" > "$log_dir/process_$i.out" 2>&1 &
  pids+=("$!")
done
tail -n +1 -f --pid="${pids[0]}" "$log_dir/process_0.out" 2>/dev/null &
tail_pid=$!

# Wait for all; the first failure stops the others.
status=0
declare -A done_rc=()
while ((${#done_rc[@]} < n)); do
  for ((i = 0; i < n; i++)); do
    [[ -n "${done_rc[$i]+x}" ]] && continue
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      rc=0
      wait "${pids[$i]}" || rc=$?
      done_rc[$i]=$rc
      if ((rc != 0 && status == 0)); then
        status=$rc
        echo "launch/local.sh: process $i exited with status $rc; stopping the others." \
             "Logs: $log_dir/process_*.out" >&2
        tail -n 15 "$log_dir/process_$i.out" | sed "s/^/  [process $i] /" >&2 || true
        stop_all
      fi
    fi
  done
  if ((${#done_rc[@]} < n)); then sleep 0.2; fi
done
wait "$tail_pid" 2>/dev/null || true
exit "$status"
