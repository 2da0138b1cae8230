#!/bin/bash
# One SLURM allocation as one Ray cluster running one hpsearch study: a Ray head on the first node, a
# Ray worker on every other node (each under srun), then `hpsearch run` on the head with
# executor.kind=ray and executor.address pointing at it. Ray stops when the run ends.
#
#   sbatch --nodes=4 --gpus-per-node=4 --cpus-per-task=32 --time=12:00:00 \
#       scripts/slurm_ray.sh studies/car_price.yaml --set executor.workers=16 --set executor.gpus_per_trial=1
#
# Arguments: the study file, then anything `hpsearch run` takes. Submit from the directory the study's
# relative paths start from, with the Python environment that has hpsearch active (sbatch passes the
# environment on, HPSEARCH_STORAGE included). Optional environment:
#   HPSEARCH_PYTHON  the interpreter with hpsearch and ray (default: python3 on PATH)
#   RAY_PORT         the head's port (default 6379)
#   RAY_HEAD_IP      the head's address on the network the nodes share (default: found on the head)
#   RAY_WAIT_S       how long to wait for every node to join (default 300)
#   RAY_AUTH_TOKEN   the cluster's token; a fresh one is made per job when unset
#
# Ray 2.60 turns token authentication on for `ray start` clusters: the head, the workers and hpsearch
# (Ray's driver) must share RAY_AUTH_MODE=token and one token. This script exports both before it starts
# anything, and srun passes the environment to every node, so the token never touches a file.
#
# Shortly before the time limit SLURM sends SIGTERM to this script (--signal below); hpsearch then fails
# its running trials as interrupted and exits 130, and the job requeues itself to resume the study.
#
#SBATCH --job-name=hpsearch-ray
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=slurm-ray-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: sbatch [sbatch options] scripts/slurm_ray.sh STUDY.yaml [hpsearch run options]" >&2
  exit 2
fi
study=$1
shift
python=${HPSEARCH_PYTHON:-python3}
port=${RAY_PORT:-6379}
wait_s=${RAY_WAIT_S:-300}
ray_bin="$(dirname "$(command -v "$python")")/ray"
[ -x "$ray_bin" ] || ray_bin=ray

# A broken study is reported before any node starts Ray.
"$python" -m hpsearch validate "$study" "$@"

export RAY_AUTH_MODE=token
# No usage reports from compute nodes.
export RAY_USAGE_STATS_ENABLED=0
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  RAY_AUTH_TOKEN=$("$python" -c 'import secrets; print(secrets.token_hex(32))')
fi
export RAY_AUTH_TOKEN

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
# SLURM runs this script on the allocation's first node, so the head and hpsearch (Ray's driver,
# which must run on a node of the cluster) share it.
head_node=${nodes[0]}
# The head's address as the other nodes reach it: its host name's IPv4 address, or its first
# configured one where the name maps to loopback (Debian's 127.0.1.1). RAY_HEAD_IP overrides both.
head_ip=${RAY_HEAD_IP:-$(srun --nodes=1 --ntasks=1 --overlap -w "$head_node" bash -c '
  ip=$(hostname --ip-address | tr " " "\n" | grep -m1 -E "^[0-9.]+$")
  case "$ip" in 127.*|"") ip=$(hostname -I | tr " " "\n" | grep -m1 -E "^[0-9.]+$") ;; esac
  echo "$ip"' || true)}
if [ -z "$head_ip" ]; then
  echo "slurm_ray.sh: no IPv4 address found for $head_node; set RAY_HEAD_IP" >&2
  exit 1
fi
address="$head_ip:$port"
cpus=()
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  cpus=(--num-cpus "$SLURM_CPUS_PER_TASK")
fi
echo "slurm_ray.sh: Ray head on $head_node at $address, ${#nodes[@]} node(s)"

ray_steps=()
stop_ray() {
  # TERM to the Ray steps' tasks lets `ray start --block` shut its node down. Ray drains for up to
  # 30 s; after 10 the steps are ended (TERM to srun kills its step, and SLURM every process in it).
  if [ ${#ray_steps[@]} -gt 0 ]; then
    scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || true
    for _ in $(seq 10); do
      kill -0 "${ray_steps[@]}" 2>/dev/null || break
      sleep 1
    done
    kill "${ray_steps[@]}" 2>/dev/null || true
    wait "${ray_steps[@]}" 2>/dev/null || true
    ray_steps=()
  fi
}
trap stop_ray EXIT

srun --nodes=1 --ntasks=1 --overlap -w "$head_node" \
  "$ray_bin" start --head --block --disable-usage-stats --node-ip-address="$head_ip" --port="$port" "${cpus[@]}" &
ray_steps+=($!)
# Workers can join only once the head answers.
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 --overlap -w "$node" "$ray_bin" start --block --disable-usage-stats --address="$address" "${cpus[@]}" &
  ray_steps+=($!)
done

# hpsearch sizes its workers to the nodes alive when it starts: wait for all of them.
"$python" - "$address" "${#nodes[@]}" "$wait_s" <<'EOF'
import logging, sys, time
address, want, wait_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + wait_s
import ray
while True:
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        break
    except Exception as exc:  # the head is not up yet
        if time.monotonic() > deadline:
            sys.exit(f"slurm_ray.sh: no Ray head answered at {address} within {wait_s:.0f} s: {exc}")
        time.sleep(2)
while (alive := sum(n["Alive"] for n in ray.nodes())) < want:
    if time.monotonic() > deadline:
        sys.exit(f"slurm_ray.sh: {alive} of {want} Ray nodes joined within {wait_s:.0f} s")
    time.sleep(2)
print(f"slurm_ray.sh: {alive} Ray node(s) up")
EOF

"$python" -m hpsearch run "$study" "$@" --set executor.kind=ray --set "executor.address=$address" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
# `wait` returns early when the trap runs; wait again until hpsearch has really exited.
while true; do
  status=0
  wait "$child" || status=$?
  kill -0 "$child" 2>/dev/null || break
done
echo "slurm_ray.sh: hpsearch exited with $status"
# Requeue only while the job still runs (the early signal): after scancel or the time limit itself
# SLURM is already ending it, and a requeue would undo a cancel.
state=$(squeue -h -j "$SLURM_JOB_ID" -o %T 2>/dev/null || true)
stop_ray
if [ "$status" -eq 130 ] && [ "$state" = RUNNING ]; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
