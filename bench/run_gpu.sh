#!/usr/bin/env bash
# One command on the GPU machine: build the engine and kernels for sm_90a, run the CUDA tests,
# then ftd-bench and the HF Transformers v5 baseline on the same shapes from the same initial
# weights, and print a side-by-side table. Logs and JSON lines go to $OUT.
#   LAYERS="4 8" STEPS=8 WARMUP=3 SEQ=4096 bash bench/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ftd-gpu}
mkdir -p "$OUT"
LAYERS=${LAYERS:-"4 8"}
STEPS=${STEPS:-8}
WARMUP=${WARMUP:-3}
SEQ=${SEQ:-4096}
BUILD=${BUILD:-build-gpu}
source .gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DFTD_WITH_SERVICE=OFF -DFTD_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target ftd-train ftd-bench kernels_tests engine_tests \
  >"$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"

status=0
for t in kernels_tests engine_tests; do
  "$BUILD/bin/$t" --gtest_brief=1 2>&1 | tee "$OUT/$t.log" | tail -4 || status=1
done
[ "${SKIP_BENCH:-0}" = 1 ] && exit $status

for L in $LAYERS; do
  init=/tmp/ftd-init-$L
  if [ ! -f "$init/config.json" ]; then
    python3 bench/hf_v5_baseline.py --layers "$L" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" \
      --save-init "$init" 2>"$OUT/hf-$L.err" | tail -1 | tee "$OUT/hf-$L.json"
  else
    python3 bench/hf_v5_baseline.py --model "$init" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" \
      2>"$OUT/hf-$L.err" | tail -1 | tee "$OUT/hf-$L.json"
  fi
  for gate in real balanced; do
    "$BUILD/bin/ftd-bench" --model "$init" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --gate "$gate" \
      ${FTD_BENCH_ARGS:-} 2>"$OUT/ftd-$L-$gate.err" | tail -1 | tee "$OUT/ftd-$L-$gate.json"
  done
done
python3 bench/compare.py "$OUT" | tee "$OUT/table.md"
exit $status
