#!/usr/bin/env bash
# The main job on the embedded defaults: sets up, builds, generates a small MoE checkpoint and
# a bundled dataset, fine-tunes it (CPU when there is no GPU) and prints the HF checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FTD_BUILD_DIR:-build}
WORK=${FTD_DEMO_DIR:-/tmp/ftd-demo}

bash scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target ftd-train
bin="$BUILD_DIR/bin"

rm -rf "$WORK" && mkdir -p "$WORK"
"$bin/ftd-train" init-model --preset tiny --seed 0 --dtype fp32 --out "$WORK/base"
# The bundled dataset: deterministic token sequences (a cyclic pattern the model can learn).
python3 - "$WORK/train.jsonl" <<'PY'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for i in range(64):
        start, step = rng.randrange(512), rng.choice([1, 3, 7])
        f.write(json.dumps({"input_ids": [(start + step * j) % 512 for j in range(48)]}) + "\n")
PY
cat > "$WORK/job.yaml" <<YAML
base_model: $WORK/base
datasets: {train: $WORK/train.jsonl, format: tokens}
output: $WORK/out
hyperparameters: {max_steps: 30, global_batch: 8, micro_batch: 4, seq_len: 48, lr: 3.0e-3,
                  schedule: cosine, warmup_steps: 3, weight_decay: 0.01, grad_clip: 1.0, seed: 0}
checkpointing: {every_n_steps: 10, keep_last: 2}
YAML
"$bin/ftd-train" train --spec "$WORK/job.yaml"
