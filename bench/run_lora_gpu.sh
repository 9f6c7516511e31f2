#!/usr/bin/env bash
# LoRA on ONE GPU, the FULL Qwen3-30B-A3B shape (48 layers, 30.5B parameters, random init, bf16
# base), rank 16 / alpha 32 on q/k/v/o and on every expert's gate_up and down: ftd against HF
# Transformers v5 + PEFT (target_parameters for the fused experts) on the same weights, in the
# same run, seq 4096 (real router, one sequence a step, AdamW on the adapters inside the timer).
#   1. builds ftd-bench (and ftd-train) for sm_90a;
#   2. bench/hf_peft_lora.py: HF + PEFT with and without activation checkpointing over SEQS, after
#      writing its random base (an HF checkpoint, ~61 GB: INIT_DIR defaults to /dev/shm, the GPU
#      machine's disk is 64 GiB) and its initial adapter;
#   3. the service path, what a user's job runs (bench/service_lora_bench.py): `ftd --local-worker`,
#      a `method: lora` job per sequence length and activation-checkpointing setting submitted with
#      ftctl (init_adapter: the same adapter), each rank the ftd-train the worker starts;
#   4. ftd-bench --model INIT --adapter ADAPTER (the same base and adapter) over SEQS, with and
#      without --ckpt, one process per setting (an out-of-memory run is recorded as such);
#   5. prints the table for bench/RESULTS.md: TPS, step time, peak memory, the ratios at seq 4096
#      (the service's against HF + PEFT's), and the longest sequence each fits.
#   SEQS=4096,8192,16384,32768 bash bench/run_lora_gpu.sh
# BIN=dir uses binaries already built; LAYERS=4 for a quick check. Logs and JSON lines go to $OUT.
# Split over device calls (one call has 10 minutes; the machine keeps /dev/shm while it stays warm):
#   STAGES=hf KEEP_INIT=1 ...        HF + PEFT, writes the base and adapter, keeps them
#   STAGES="service bench" ...       ftd on them (results appended to the same $OUT/results.jsonl)
# SERVICE_SEQS (default SEQS) limits the service jobs' sequence lengths, each job loading the
# 61 GB base again; ftd-bench's sweep over SEQS gives the longest sequence ftd's step fits.
# Activation checkpointing per stage: HF_CKPT, SERVICE_CKPT, BENCH_CKPT (each default 1,0; empty
# skips). PRECISIONS (default auto): the adapters' spec.precision for ftd, e.g. auto,compact.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ftd-lora}
mkdir -p "$OUT"
BUILD=${BUILD:-build-gpu}
LAYERS=${LAYERS:-48}
SEQS=${SEQS:-4096,8192,16384}
INIT_DIR=${INIT_DIR:-/dev/shm/ftd-lora-init-$LAYERS}
# Beside the base: the service's jobs name both under one shared model root.
ADAPTER_DIR=${ADAPTER_DIR:-$INIT_DIR-adapter}
source .gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

if [ -z "${BIN:-}" ]; then
  t0=$(date +%s)
  cmake -S . -B "$BUILD" -G Ninja -DFTD_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  cmake --build "$BUILD" -j "$(nproc)" --target ftd ftd-worker ftctl ftd-bench ftd-train >"$OUT/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
  BIN=$BUILD/bin
fi
BIN=$(cd "$BIN" && pwd)
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'):${LD_LIBRARY_PATH:-}"

status=0
RESULTS=$OUT/results.jsonl
STAGES=${STAGES:-hf service bench}
stage() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# HF + PEFT first (it also writes the shared base and adapter), then ftd, one process each.
if stage hf; then
  : >"$RESULTS"
  rm -rf "$INIT_DIR" "$ADAPTER_DIR"
  PYTHONUNBUFFERED=1 python3 bench/hf_peft_lora.py --layers "$LAYERS" --seqs "$SEQS" --ckpt "${HF_CKPT-1,0}" \
    --save-init "$INIT_DIR" --save-adapter "$ADAPTER_DIR" 2>"$OUT/hf.err" | tee -a "$RESULTS" || status=1
fi
[ -f "$INIT_DIR/config.json" ] && [ -f "$ADAPTER_DIR/adapter_config.json" ] ||
  { echo "no shared base and adapter at $INIT_DIR (the hf stage writes them; see $OUT/hf.err)"; exit 1; }
PRECISIONS=${PRECISIONS:-auto}
if stage service && [ -n "${SERVICE_CKPT-1,0}" ]; then
  PYTHONUNBUFFERED=1 python3 bench/service_lora_bench.py --bin "$BIN" --out "$OUT" --base "$INIT_DIR" \
    --adapter "$ADAPTER_DIR" --seqs "${SERVICE_SEQS:-$SEQS}" --ckpt "${SERVICE_CKPT-1,0}" \
    --precisions "$PRECISIONS" 2>"$OUT/service.err" | tee -a "$RESULTS" ||
    status=1
fi
BENCH_CKPT=${BENCH_CKPT-1,0}
stage bench && [ -n "$BENCH_CKPT" ] && for seq in ${SEQS//,/ }; do
  for ckpt in ${BENCH_CKPT//,/ }; do
    for precision in ${PRECISIONS//,/ }; do
      flag=$([ "$ckpt" = 1 ] && echo --ckpt)
      line=$("$BIN/ftd-bench" --model "$INIT_DIR" --adapter "$ADAPTER_DIR" --seq "$seq" $flag --precision "$precision" \
               --lr 1e-4 --weight-decay 0.01 --grad-clip 0 2>>"$OUT/ftd.err" | tail -1)
      if [ -n "$line" ] && [ "${line#\{}" != "$line" ]; then
        echo "$line" | tee -a "$RESULTS"
      else  # out of memory (or another failure: see ftd.err)
        echo "{\"impl\": \"ftd\", \"seq\": $seq, \"ckpt\": $([ "$ckpt" = 1 ] && echo true || echo false), \"precision\": \"$precision\", \"oom\": true}" |
          tee -a "$RESULTS"
      fi
    done
  done
done
python3 - "$RESULTS" <<'PY' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{") and '"impl"' in l]
def impl_of(r): return "ftd-service" if r["impl"] == "ftd-service" else r["impl"].split("+")[0].split("-")[0]
def key(r): return (impl_of(r), r["seq"], bool(r["ckpt"]), r.get("precision", "-"))
by = {key(r): r for r in rows}
gpu = next((r.get("gpu") for r in rows if r.get("gpu")), "?")
print(f"LoRA r16 a32 (q/k/v/o + experts gate_up/down), Qwen3-30B-A3B 48 layers, bf16 base, one {gpu}\n")
print("| impl | seq | act. ckpt | adapters' precision | tokens/s | step ms | peak GiB |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['impl']} | {r['seq']} | {'on' if r['ckpt'] else 'off'} | {r.get('precision', '-')} | "
          + ("OOM | - | - |" if r.get("oom") else f"{r['tps']} | {r['step_ms']} | {r['peak_gib']} |"))
def best(impl, seq):
    fits = [r for r in rows if key(r)[0] == impl and r["seq"] == seq and not r.get("oom")]
    return max(fits, key=lambda r: r["tps"]) if fits else None
h = best("hf", 4096)
for impl in ("ftd-service", "ftd"):
    f = best(impl, 4096)
    if f and h:
        print(f"\nseq 4096, each at its fastest setting that fits: {impl} {f['tps']} tokens/s, {f['peak_gib']} GiB; "
              f"HF + PEFT {h['tps']} tokens/s, {h['peak_gib']} GiB: {f['tps'] / h['tps']:.2f}x the tokens/s at "
              f"{f['peak_gib'] / h['peak_gib']:.2f}x the peak memory")
print("\nEvery service setting against every HF + PEFT setting that fits, seq 4096:")
ran = lambda impl: [r for r in rows if impl_of(r) == impl and r["seq"] == 4096 and not r.get("oom")]
on = lambda r: "ckpt on" if r["ckpt"] else "ckpt off"
for f in ran("ftd-service"):
    for h in ran("hf"):
        print(f"- service ({on(f)}, {f.get('precision')}) vs HF + PEFT ({on(h)}): {f['tps'] / h['tps']:.2f}x the "
              f"tokens/s at {f['peak_gib'] / h['peak_gib']:.2f}x the peak memory")
for impl in ("ftd-service", "ftd", "hf"):
    fits = [r["seq"] for r in rows if key(r)[0] == impl and not r.get("oom")]
    print(f"longest sequence {impl} fits (of those tried): {max(fits) if fits else 'none'}")
PY
[ "${KEEP_INIT:-0}" = 1 ] || rm -rf "$INIT_DIR" "$ADAPTER_DIR"
exit $status
