#!/usr/bin/env bash
# A gpe_jax run on a Cloud TPU pod slice: create the TPU VM, copy the code to every worker,
# install, run the command on all workers at once (jax.distributed detects the pod), fetch the
# logs, stop, delete. See README "Running on a pod or a cluster".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [OPTIONS] SUBCOMMAND [-- ARGS...]

Subcommands:
  create    gcloud compute tpus tpu-vm create NAME (accelerator, runtime version, spot)
  copy      pack this checkout (tracked files) and unpack it on every worker
  install   pip install jax[tpu] and the package (-e .) on every worker
  mount     mount the gs:// bucket of the workdir with gcsfuse at /gcs/BUCKET on every worker
  run       start `python3 -m MODULE ARGS --coordinator_address=auto` on every worker in the
            background (nohup), one log per worker (~/gpe_jax_logs/run.log there)
  logs      fetch every worker's log to LOG_DIR/worker_<i>.log
  stop      SIGTERM the run on every worker (it stops resumably: exit 130)
  delete    delete the TPU VM
  all       create, copy, install, mount (for a gs:// workdir), run

ARGS (for run/all) are the command's flags, e.g.
  -- --config=configs/mnist.py --workdir=gs://BUCKET/runs/mnist
The workdir must be visible to every worker: gs://BUCKET/PATH (mounted with gcsfuse at
/gcs/BUCKET on each worker; the command is given --workdir=/gcs/BUCKET/PATH) or a path on
shared storage (Filestore/NFS); any other path gets a warning (each worker would write its own
copy and checkpoints could not be committed).

Options (environment variable in brackets):
  --name=NAME          TPU VM name [TPU_NAME] (default gpe-jax)
  --zone=ZONE          [TPU_ZONE] (default us-central2-b)
  --project=PROJECT    [TPU_PROJECT] (default: gcloud's configured project)
  --accelerator=TYPE   [TPU_ACCELERATOR] (default v4-32)
  --version=VERSION    TPU runtime [TPU_VERSION] (default tpu-ubuntu2204-base)
  --spot               create a spot TPU [TPU_SPOT=1]; after a preemption rerun `all`
  --workers=N          number of workers [TPU_WORKERS] (default: asked from gcloud)
  --module=MODULE      [GPE_JAX_MODULE] (default gpe_jax.main; e.g. gpe_jax.experiments.table1)
  --remote_dir=DIR     code folder on the workers [GPE_JAX_REMOTE_DIR] (default gpe_jax)
  --log_dir=DIR        where `logs` writes [GPE_JAX_LOG_DIR] (default tpu_logs/NAME)
  --jax_version=V      [GPE_JAX_JAX_VERSION] (default 0.10.2)
  --dry-run            print every gcloud command instead of running it
  -h, --help           this text

A preempted or stopped run resumes: rerun the same `run` (or `all`) with the same workdir;
every stage continues from its last checkpoint.
EOF
}

name="${TPU_NAME:-gpe-jax}"
zone="${TPU_ZONE:-us-central2-b}"
project="${TPU_PROJECT:-}"
accelerator="${TPU_ACCELERATOR:-v4-32}"
version="${TPU_VERSION:-tpu-ubuntu2204-base}"
spot="${TPU_SPOT:-0}"
workers="${TPU_WORKERS:-}"
module="${GPE_JAX_MODULE:-gpe_jax.main}"
remote_dir="${GPE_JAX_REMOTE_DIR:-gpe_jax}"
log_dir="${GPE_JAX_LOG_DIR:-}"
jax_version="${GPE_JAX_JAX_VERSION:-0.10.2}"
dry_run=0
sub=""
args=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1 ;;
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) spot=1 ;;
    --workers=*) workers="${1#*=}" ;;
    --module=*) module="${1#*=}" ;;
    --remote_dir=*) remote_dir="${1#*=}" ;;
    --log_dir=*) log_dir="${1#*=}" ;;
    --jax_version=*) jax_version="${1#*=}" ;;
    --) shift; args=("$@"); break ;;
    create|copy|install|mount|run|logs|stop|delete|all)
      [[ -z "$sub" ]] || { echo "launch/tpu_pod.sh: one subcommand at a time ($sub, $1)" >&2
                           exit 2; }
      sub="$1" ;;
    *) echo "launch/tpu_pod.sh: unknown argument $1 (the command's flags go after --;" \
            "-h for help)" >&2
       exit 2 ;;
  esac
  shift
done
[[ -n "$sub" ]] || { usage >&2; exit 2; }
log_dir="${log_dir:-tpu_logs/$name}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
remote_log="gpe_jax_logs"   # under each worker's home

# Print a command readably (quoted where needed), or run it.
quote() {
  local a out=() q="'" qq="'\\''"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=("$a")
    elif [[ "$a" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then   # --flag='value'
      out+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]//$q/$qq}'")
    else out+=("'${a//$q/$qq}'"); fi
  done
  echo "${out[*]}"
}
do_cmd() {
  if ((dry_run)); then quote "$@"; else "$@"; fi
}
gflags=(--zone="$zone")
[[ -z "$project" ]] || gflags+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)
on_all() { do_cmd "${tpu[@]}" ssh "$name" "${gflags[@]}" --worker=all --command="$1"; }

# The workdir in ARGS: gs://BUCKET/PATH -> /gcs/BUCKET/PATH on the workers.
bucket=""
run_args=()
workdir=""
for a in "${args[@]+"${args[@]}"}"; do
  if [[ "$a" == --workdir=* ]]; then
    workdir="${a#*=}"
    if [[ "$workdir" == gs://* ]]; then
      rest="${workdir#gs://}"
      bucket="${rest%%/*}"
      a="--workdir=/gcs/$rest"
    fi
  fi
  run_args+=("$a")
done

check_workdir() {
  if [[ -z "$workdir" ]]; then
    echo "launch/tpu_pod.sh: give the run a --workdir on storage every worker sees" \
         "(gs://BUCKET/PATH, or a shared file system), after --" >&2
    exit 2
  fi
  if [[ -z "$bucket" ]]; then
    case "$workdir" in
      /gcs/*|/mnt/*|/nfs/*|/shared/*) ;;
      *) echo "launch/tpu_pod.sh: warning: --workdir=$workdir does not look like shared" \
              "storage (gs://..., /gcs/, /mnt/, /nfs/, /shared/); every worker must see the" \
              "same workdir, or checkpoints cannot be committed and records diverge." >&2 ;;
    esac
  fi
}

cmd_create() {
  local extra=()
  [[ "$spot" != "1" ]] || extra+=(--spot)
  do_cmd "${tpu[@]}" create "$name" "${gflags[@]}" --accelerator-type="$accelerator" \
    --version="$version" "${extra[@]+"${extra[@]}"}"
}

cmd_copy() {
  local tarball="/tmp/gpe_jax_code_$name.tgz"
  if ((dry_run)); then
    echo "(cd $(quote "$repo") && git ls-files -z | tar czf $(quote "$tarball") --null -T -)"
  elif git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z | tar czf "$tarball" --null -T -)
  else
    tar czf "$tarball" -C "$repo" --exclude=.git --exclude=runs --exclude=.pytest_cache .
  fi
  do_cmd "${tpu[@]}" scp "$tarball" "$name:gpe_jax_code.tgz" "${gflags[@]}" --worker=all
  on_all "mkdir -p $remote_dir && tar xzf gpe_jax_code.tgz -C $remote_dir && rm gpe_jax_code.tgz"
}

cmd_install() {
  on_all "cd $remote_dir && python3 -m pip install -q -U pip && python3 -m pip install -q 'jax[tpu]==$jax_version' -e ."
}

cmd_mount() {
  if [[ -z "$bucket" ]]; then
    echo "launch/tpu_pod.sh: mount: the workdir is not gs://BUCKET/...; nothing to mount" >&2
    return 0
  fi
  on_all "set -e; if ! command -v gcsfuse >/dev/null; then
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null;
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null;
sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi;
sudo mkdir -p /gcs/$bucket && sudo chown \$(id -u):\$(id -g) /gcs/$bucket;
mountpoint -q /gcs/$bucket || gcsfuse --implicit-dirs $bucket /gcs/$bucket"
}

cmd_run() {
  check_workdir
  local line
  line="$(quote python3 -m "$module" "${run_args[@]}" --coordinator_address=auto)"
  on_all "cd $remote_dir && mkdir -p ~/$remote_log && (nohup env GPE_JAX_HEARTBEAT_TIMEOUT=\${GPE_JAX_HEARTBEAT_TIMEOUT:-60} $line > ~/$remote_log/run.log 2>&1 < /dev/null & echo \$! > ~/$remote_log/run.pid)"
  ((dry_run)) || echo "launch/tpu_pod.sh: started on every worker of $name; fetch the logs" \
       "with: launch/tpu_pod.sh --name=$name --zone=$zone logs" >&2
}

worker_count() {
  if [[ -n "$workers" ]]; then echo "$workers"; return; fi
  if ((dry_run)); then
    quote "${tpu[@]}" describe "$name" "${gflags[@]}" --format='value(networkEndpoints.len())' >&2
    echo "# (dry run: the worker count comes from the describe above; 1 shown, or pass" \
         "--workers=N)" >&2
    echo 1
    return
  fi
  "${tpu[@]}" describe "$name" "${gflags[@]}" --format='value(networkEndpoints.len())'
}

cmd_logs() {
  local n w
  n="$(worker_count)"
  if ((dry_run)); then echo "mkdir -p $(quote "$log_dir")"; else mkdir -p "$log_dir"; fi
  for ((w = 0; w < n; w++)); do
    do_cmd "${tpu[@]}" scp "$name:$remote_log/run.log" "$log_dir/worker_$w.log" "${gflags[@]}" \
      --worker="$w"
  done
  ((dry_run)) || echo "launch/tpu_pod.sh: $n worker log(s) in $log_dir" >&2
}

cmd_stop() {
  on_all "test -f ~/$remote_log/run.pid && kill -TERM \$(cat ~/$remote_log/run.pid) 2>/dev/null; true"
}

cmd_delete() {
  do_cmd "${tpu[@]}" delete "$name" "${gflags[@]}" --quiet
}

case "$sub" in
  create) cmd_create ;;
  copy) cmd_copy ;;
  install) cmd_install ;;
  mount) cmd_mount ;;
  run) cmd_run ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
  all)
    check_workdir
    cmd_create
    cmd_copy
    cmd_install
    [[ -z "$bucket" ]] || cmd_mount
    cmd_run ;;
esac
