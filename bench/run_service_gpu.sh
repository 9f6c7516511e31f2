#!/usr/bin/env bash
# The service path against HF Transformers v5, in one call on the GPU machine: builds everything
# (service included), starts `ftd --local-worker`, and per layer count (Qwen3-30B-A3B layer shape,
# seq 4096, one sequence a step, real router):
#   - runs bench/hf_v5_baseline.py, which writes its random init (the weights every run starts from);
#   - submits fine-tune jobs with ftctl on those weights (the default spec, and grad_clip 0), reads
#     TPS/GPU, TFLOP/s, MFU and peak memory from the coordinator's /metrics while they run;
#   - runs ftd-bench on the same weights (the same step the jobs run, timed on its own);
#   - with UNCHANGED=1, 20 steps at lr 1e-5 of HF's protocol and of each ftd precision policy,
#     reporting the fraction of parameters the updates left unchanged;
# then prints one table (bench/service_bench.py). Logs, JSON lines and the table go to $OUT.
#   LAYERS="4 8" STEPS=11 UNCHANGED=1 bash bench/run_service_gpu.sh
#   FAMILY=deepseek_v3 LAYERS=4 bash bench/run_service_gpu.sh    (Moonlight-16B-A3B layer shape)
#   FAMILY=mixtral LAYERS=2 CLIPS=1 bash bench/run_service_gpu.sh (Mixtral-8x7B layer shape, default spec only)
#   EXPERTS=ftd ...   the jobs' backends.experts (and ftd-bench's --experts); unset: the spec's default
#   RECOMPUTE=1 ...   also a job per clip with parallelism.recompute_expert_grads (backends.experts ftd)
#   PRECISIONS="auto compact_sr" ...  a job and an ftd-bench run per clip under each precision
#   PROMPT=0.5 ...    labels of the row's first half ignored (-100), as a chat row's prompt, in HF's
#                     baseline, the jobs' data and ftd-bench alike
# BIN=dir uses binaries already built for sm_90a (ftd, ftd-worker, ftctl, ftd-train, ftd-bench)
# instead of building; SKIP_TESTS=1 skips the CUDA tests (kernels_tests, engine_tests).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ftd-service}
mkdir -p "$OUT"
BUILD=${BUILD:-build-gpu}
source .gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

status=0
if [ -z "${BIN:-}" ]; then
  t0=$(date +%s)
  cmake -S . -B "$BUILD" -G Ninja -DFTD_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; exit 1; }
  targets="ftd ftd-worker ftctl ftd-train ftd-bench"
  [ "${SKIP_TESTS:-0}" = 1 ] || targets="$targets kernels_tests engine_tests"
  # shellcheck disable=SC2086
  cmake --build "$BUILD" -j "$(nproc)" --target $targets >"$OUT/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
  BIN=$BUILD/bin
fi
BIN=$(cd "$BIN" && pwd)
# Binaries built elsewhere find LibTorch here.
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'):$LD_LIBRARY_PATH"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  for t in kernels_tests engine_tests; do
    "$BIN/$t" --gtest_brief=1 2>&1 | tee "$OUT/$t.log" | tail -4
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
fi
[ "${SKIP_BENCH:-0}" = 1 ] && exit $status
PYTHONUNBUFFERED=1 python3 bench/service_bench.py --bin "$BIN" --out "$OUT" --layers ${LAYERS:-4} \
  --steps "${STEPS:-11}" --seq "${SEQ:-4096}" --family "${FAMILY:-qwen3_moe}" --clips ${CLIPS:-1 0} $([ "${UNCHANGED:-0}" = 1 ] && echo --unchanged) \
  --experts "${EXPERTS:-}" $([ "${RECOMPUTE:-0}" = 1 ] && echo --recompute-expert-grads) \
  $([ -n "${PRECISIONS:-}" ] && echo --precisions $PRECISIONS) --prompt-fraction "${PROMPT:-0}" || status=1
exit $status
