#!/usr/bin/env bash
# One command on the GPU machine: build the engine and kernels for sm_90a, run the CUDA tests,
# then ftd-bench and the HF Transformers v5 baseline on the same shapes from the same initial
# weights, and print a side-by-side table. Logs and JSON lines go to $OUT.
#   LAYERS="4 8" STEPS=8 WARMUP=3 SEQ=4096 bash bench/run_gpu.sh
#   FAMILY=deepseek_v3 LAYERS=4 OUT=/tmp/ftd-gpu-moonlight bash bench/run_gpu.sh   (Moonlight-16B-A3B shape)
#   FAMILY=nemotron_h LAYERS=6 KERNEL_BENCH=1 OUT=/tmp/ftd-gpu-nano3 bash bench/run_gpu.sh   (Nemotron Nano 3:
#   the pattern's first 6 layers, MEMEM*; the HF JSON line says whether HF ran mamba_ssm or its torch path;
#   VARIANTS="mamba-kernels:--mamba-kernels" times the Mamba2 layers through the conv1d/SSD-scan kernels as well;
#   the default is the ATen chunked form, faster on an H100)
# Knobs: GATES="real balanced"; KERNEL_BENCH=1 runs ftd-kernel-bench; PROFILE=1 adds a per-kernel
# profile of one step of each ftd run ($OUT/profile-L-gate.txt); VARIANTS="name:args|name:args"
# runs extra ftd-bench configurations (real gate) after the main ones; SKIP_TESTS=1;
# FTD_BENCH_ARGS: extra ftd-bench arguments (e.g. --no-cuda-graph, --grad-clip 0,
# --precision bf16_pure). bench/run_service_gpu.sh measures the service path itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ftd-gpu}
mkdir -p "$OUT"
LAYERS=${LAYERS:-"4 8"}
STEPS=${STEPS:-8}
WARMUP=${WARMUP:-3}
SEQ=${SEQ:-4096}
FAMILY=${FAMILY:-qwen3_moe}  # qwen3_moe: Qwen3-30B-A3B layers; deepseek_v3: Moonlight-16B-A3B layers; nemotron_h: Nano 3
BUILD=${BUILD:-build-gpu}
source .gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DFTD_WITH_SERVICE=OFF -DFTD_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target ftd-train ftd-bench ftd-kernel-bench kernels_tests engine_tests dist_tests \
  >"$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"

status=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  for t in kernels_tests engine_tests dist_tests; do
    "$BUILD/bin/$t" --gtest_brief=1 2>&1 | tee "$OUT/$t.log" | tail -4 || status=1
  done
fi
if [ "${KERNEL_BENCH:-0}" = 1 ]; then
  "$BUILD/bin/ftd-kernel-bench" >"$OUT/kernel_bench.jsonl" 2>"$OUT/kernel_bench.err" || status=1
  cat "$OUT/kernel_bench.jsonl"
fi
[ "${SKIP_BENCH:-0}" = 1 ] && exit $status

for L in $LAYERS; do
  init=/tmp/ftd-init-$L
  [ "$FAMILY" = qwen3_moe ] || init=/tmp/ftd-init-$FAMILY-$L
  if [ ! -f "$init/config.json" ]; then
    python3 bench/hf_v5_baseline.py --family "$FAMILY" --layers "$L" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" \
      --save-init "$init" 2>"$OUT/hf-$L.err" | tail -1 | tee "$OUT/hf-$L.json"
  else
    python3 bench/hf_v5_baseline.py --family "$FAMILY" --model "$init" --seq "$SEQ" --steps "$STEPS" \
      --warmup "$WARMUP" 2>"$OUT/hf-$L.err" | tail -1 | tee "$OUT/hf-$L.json"
  fi
  for gate in ${GATES:-real balanced}; do
    prof=()
    [ "${PROFILE:-0}" = 1 ] && prof=(--profile "$OUT/profile-$L-$gate.txt")
    "$BUILD/bin/ftd-bench" --model "$init" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --gate "$gate" \
      ${FTD_BENCH_ARGS:-} "${prof[@]}" 2>"$OUT/ftd-$L-$gate.err" | tail -1 | tee "$OUT/ftd-$L-$gate.json"
  done
  if [ -n "${VARIANTS:-}" ]; then
    IFS='|' read -ra vs <<<"$VARIANTS"
    for v in "${vs[@]}"; do
      name=${v%%:*}
      args=${v#*:}
      echo -n "variant $name: "
      # shellcheck disable=SC2086
      "$BUILD/bin/ftd-bench" --model "$init" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --gate real $args \
        2>"$OUT/variant-$L-$name.err" | tail -1 | tee "$OUT/variant-$L-$name.json"
    done
  fi
done
python3 bench/compare.py "$OUT" | tee "$OUT/table.md"
exit $status
