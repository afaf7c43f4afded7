#!/usr/bin/env bash
# The capture node live on the GPU machine: `threer-ros latency` over real ROS 2 topics with
# the synthetic rig (16 cameras at 1100 x 1604), released architectures with random weights.
# Run there from the repository root, after `source scripts/gpu_env.sh PACK`:
#
#   bash scripts/gpu_live.sh OUT_DIR BACKEND RATE[,RATE...] [raw|jpeg] [extra latency args...]
#
# writes OUT_DIR/node_gpu_<backend>_<rate>hz_<transport>.json per rate (docs/benchmarks.md, where
# scripts/plot_live.py plots them), e.g. with `--warmup 5 --duration 15` (a soak: --duration 600).
set -euo pipefail
out="${1:?usage: gpu_live.sh OUT_DIR BACKEND RATES [raw|jpeg] [latency args]}"
backend="${2:?backend}"
rates="${3:?rates, e.g. 5,10,15}"
transport="${4:-raw}"
shift 4 || shift $#
weights="${THREER_WEIGHTS_DIR:-/tmp/threer_weights}"
mkdir -p "$out" "$weights"
run() { python3 -m threer_ros.cli "$@"; }
case "$backend" in
  fast3r) checkpoint="$weights/fast3r" ;;
  *) checkpoint="$weights/$backend.pth" ;;
esac
[[ -e "$checkpoint" ]] || run weights random "$backend" --out "$checkpoint"
compressed=()
[[ "$transport" == jpeg ]] && compressed=(--compressed)
IFS=, read -ra each <<< "$rates"
for rate in "${each[@]}"; do
  run latency --device cuda --backend "$backend" --param "checkpoint:=$checkpoint" \
    --width 1100 --working-width 512 --rate "$rate" "${compressed[@]}" \
    --out "/tmp/threer_latency" --json "$out/node_gpu_${backend}_${rate}hz_${transport}.json" "$@"
done
