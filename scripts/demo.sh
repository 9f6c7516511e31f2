#!/usr/bin/env bash
# The main job on the embedded defaults, through the service: sets up, builds, starts the
# coordinator with a local worker (`ftd --local-worker`: GPUs if present, else 2 CPU slots with
# Gloo), generates a small MoE checkpoint and a bundled dataset, submits a fine-tune job over
# gRPC with the CLI (ftctl), follows its progress and prints the HF checkpoint it produced.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FTD_BUILD_DIR:-build}
WORK=${FTD_DEMO_DIR:-/tmp/ftd-demo}

bash scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target ftd-train ftd ftd-worker ftctl
bin="$(cd "$BUILD_DIR/bin" && pwd)"

rm -rf "$WORK" && mkdir -p "$WORK/models" "$WORK/datasets/demo" "$WORK/outputs"
# Tenant "demo": its datasets and outputs lie in its namespaces (datasets/demo/, outputs/demo/);
# the base model in the operator's shared, read-only model root.
"$bin/ftd-train" init-model --preset tiny --seed 0 --dtype fp32 --out "$WORK/models/base"
# The bundled dataset: deterministic token sequences (a cyclic pattern the model can learn).
python3 - "$WORK/datasets/demo/train.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for i in range(64):
        start, step = rng.randrange(512), rng.choice([1, 3, 7])
        f.write(json.dumps({"input_ids": [(start + step * j) % 512 for j in range(48)]}) + "\n")
PY

# Tokens: the admin token is also what the local worker presents.
USER_TOKEN=demo-user-$RANDOM$RANDOM
printf 'demo-admin-%s demo admin\n%s demo user\n' "$RANDOM$RANDOM" "$USER_TOKEN" > "$WORK/tokens"
chmod 600 "$WORK/tokens"
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
RANKS=$(( GPUS > 0 ? GPUS : 2 ))
"$bin/ftd" --data-dir "$WORK/ftd" --tokens-file "$WORK/tokens" --grpc-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --shared-model-root "$WORK/models" --data-root "$WORK/datasets" \
  --output-root "$WORK/outputs" \
  --local-worker --local-worker-slots "$RANKS" >"$WORK/ftd.out" 2>"$WORK/ftd.log" &
FTD_PID=$!
trap 'kill $FTD_PID 2>/dev/null; wait $FTD_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "ftd ready" "$WORK/ftd.out" 2>/dev/null && break; sleep 0.1; done
HTTP_PORT=$(sed -n 's/.*http_port=\([0-9]*\).*/\1/p' "$WORK/ftd.out")
[ -n "$HTTP_PORT" ] || { cat "$WORK/ftd.log"; exit 1; }
API="http://127.0.0.1:$HTTP_PORT"
auth=(-H "Authorization: Bearer $USER_TOKEN")
echo "ftd is up: REST $API (log $WORK/ftd.log), local worker with $RANKS slots"

cat > "$WORK/job.yaml" <<YAML
base_model: $WORK/models/base
datasets: {train: $WORK/datasets/demo/train.jsonl}
output: $WORK/outputs/demo/out
hyperparameters: {max_steps: 30, global_batch: 8, micro_batch: 4, seq_len: 48, lr: 3.0e-3,
                  schedule: cosine, warmup_steps: 3, weight_decay: 0.01, grad_clip: 1.0, seed: 0}
resources: {nodes: 1, gpus_per_node: $RANKS}
checkpointing: {every_n_steps: 10, keep_last: 2}
YAML
GRPC_PORT=$(sed -n 's/.*grpc_port=\([0-9]*\).*/\1/p' "$WORK/ftd.out")
ftctl() { "$bin/ftctl" --endpoint "127.0.0.1:$GRPC_PORT" --token "$USER_TOKEN" "$@"; }
JOB=$(ftctl submit -f "$WORK/job.yaml" -o name)
echo "submitted job $JOB; watching it (ftctl watch $JOB)"
status=0
ftctl watch "$JOB" || status=$?
echo "last lines of the ranks' output (ftctl logs):"
ftctl logs "$JOB" | tail -n 4
[ "$status" -eq 0 ] || { ftctl get "$JOB"; exit 1; }
CKPT=$(curl -fsS "${auth[@]}" "$API/v1/jobs/$JOB/checkpoints" | python3 -c 'import json,sys; print(json.load(sys.stdin)["checkpoints"][-1]["path"])')
"$bin/ftd-train" inspect "$CKPT" | head -3
echo "HF checkpoint: $CKPT"
