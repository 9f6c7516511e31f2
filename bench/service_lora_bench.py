"""LoRA on the service path (bench/run_lora_gpu.sh runs it after HF + PEFT on the GPU machine).

Starts `ftd --local-worker` with the HF baseline's random base and initial adapter in its shared
model root, and per sequence length and activation-checkpointing setting submits a `method: lora`
job with ftctl (rank/alpha/targets as the PEFT run, `lora.init_adapter` its adapter, AdamW lr 1e-4
and weight decay 0.01 as its optimizer, no clipping as it has none), one sequence a step of the
same token ids (torch.randint(0, V, (1, S)), seed 1234). Each job is the ftd-train the worker
starts; TPS, step time and peak memory come from the rank's step lines and /metrics
(service_bench.run_job). Writes one JSON line per job to stdout, in run_lora_gpu.sh's format
(impl, seq, ckpt, tps, step_ms, peak_gib | oom)."""
import argparse
import json
import os
import subprocess

import torch

from service_bench import Coordinator, log, run_job


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base", required=True, help="the HF baseline's random base (an HF checkpoint directory)")
    p.add_argument("--adapter", required=True, help="its initial PEFT adapter (same directory root as --base)")
    p.add_argument("--seqs", default="4096")
    p.add_argument("--ckpt", default="1,0")
    p.add_argument("--precisions", default="auto", help="spec.precision of the jobs, comma-separated (one job each)")
    p.add_argument("--steps", type=int, default=9, help="optimizer steps of each job (the first 3 untimed)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    a = p.parse_args()
    work = os.path.join("/tmp", "ftd-service-lora-work")
    subprocess.run(["rm", "-rf", work])
    data_dir, outputs = (os.path.join(work, d) for d in ("datasets/default", "outputs/default"))
    for d in (data_dir, outputs):
        os.makedirs(d)
    models_root = os.path.dirname(os.path.abspath(a.base))
    if os.path.dirname(os.path.abspath(a.adapter)) != models_root:
        raise SystemExit(f"--adapter must lie beside --base (in {models_root}): the job names both under one model root")
    with open(os.path.join(a.base, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    coord = Coordinator(a.bin, work, models_root=models_root)
    try:
        for seq in map(int, a.seqs.split(",")):
            ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(1234))[0].tolist()
            data = os.path.join(data_dir, f"data-{seq}.jsonl")
            with open(data, "w") as f:
                for _ in range(a.steps):
                    f.write(json.dumps({"input_ids": ids}) + "\n")
            for ckpt, precision in ((c, pr) for c in map(int, a.ckpt.split(",")) for pr in a.precisions.split(",")):
                name = f"service-lora-{seq}-ckpt{ckpt}-{precision}"
                spec = {"base_model": os.path.abspath(a.base), "datasets": {"train": data, "format": "jsonl_tokens"},
                        "output": os.path.join(outputs, name), "method": "lora", "precision": precision,
                        "lora": {"rank": a.rank, "alpha": a.alpha, "targets": ["attention", "experts"],
                                 "init_adapter": os.path.abspath(a.adapter)},
                        "hyperparameters": {"max_steps": a.steps, "global_batch": 1, "micro_batch": 1, "seq_len": seq,
                                            "lr": 1e-4, "schedule": "constant", "weight_decay": 0.01, "grad_clip": 0},
                        "parallelism": {"activation_checkpointing": bool(ckpt)},
                        "resources": {"nodes": 1, "gpus_per_node": 1}}
                res = run_job(coord, name, spec, a.out)
                line = {"impl": "ftd-service", "seq": seq, "ckpt": bool(ckpt), "precision": precision,
                        "job_state": res.get("state")}
                if res.get("state") == "SUCCEEDED" and res.get("tps"):
                    line.update(tps=round(res["tps"]), step_ms=round(res["step_ms"], 1),
                                peak_gib=round(res.get("peak_gib") or 0, 2), losses=res.get("losses"))
                else:
                    line["oom"] = True  # or another failure: see OUT/<name>.log
                print(json.dumps(line), flush=True)
    finally:
        coord.stop()


if __name__ == "__main__":
    log("service LoRA bench")
    main()
