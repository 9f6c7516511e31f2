"""The service path against HF Transformers v5 (bench/run_service_gpu.sh runs it on the GPU machine).

Starts `ftd --local-worker`; per layer count runs the HF v5 baseline (which writes the random init
every run starts from), submits fine-tune jobs with ftctl on those weights (the default spec, and
grad_clip 0) and samples the coordinator's /metrics while they run, runs ftd-bench on the same
weights, and optionally measures how many parameters 20 steps at lr 1e-5 leave unchanged under
HF's protocol and each ftd precision policy. Prints a markdown table; every raw result is in OUT.
"""
import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import torch

WARMUP = 3  # steps left out of the medians: CUDA-graph warm-up and capture


def log(*a):
    print(*a, flush=True)


def run(cmd, out_file, **kw):
    log("$", " ".join(map(str, cmd)))
    with open(out_file, "w") as err:
        res = subprocess.run(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=err, text=True, **kw)
    if res.returncode != 0:
        log(f"  failed ({res.returncode}); see {out_file}")
        with open(out_file) as f:
            log("".join(f.readlines()[-15:]))
    return res


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


class Coordinator:
    def __init__(self, bin_dir, work, models_root=None):
        self.bin, self.work = bin_dir, work
        self.token = "svc-" + secrets.token_hex(8)
        tokens = os.path.join(work, "tokens")
        with open(tokens, "w") as f:
            f.write(f"{self.token} default admin\n")
        os.chmod(tokens, 0o600)
        self.out = open(os.path.join(work, "ftd.out"), "w")
        self.proc = subprocess.Popen(
            [f"{bin_dir}/ftd", "--data-dir", f"{work}/ftd", "--tokens-file", tokens, "--grpc-listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0", "--shared-model-root", models_root or f"{work}/models", "--data-root", f"{work}/datasets",
             "--output-root", f"{work}/outputs",
             "--local-worker", "--local-worker-slots", "1"],
            stdout=self.out, stderr=open(os.path.join(work, "ftd.log"), "w"))
        for _ in range(300):
            text = open(os.path.join(work, "ftd.out")).read()
            if "ftd ready" in text:
                break
            time.sleep(0.1)
        self.grpc = re.search(r"grpc_port=(\d+)", text).group(1)
        self.http = re.search(r"http_port=(\d+)", text).group(1)

    def ftctl(self, *args, check=True):
        res = subprocess.run([f"{self.bin}/ftctl", "--endpoint", f"127.0.0.1:{self.grpc}", "--token", self.token,
                              *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and res.returncode != 0:
            raise RuntimeError(f"ftctl {' '.join(map(str, args))}: {res.stderr}")
        return res

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            return r.read().decode()

    def job_state(self, job):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/v1/jobs/{job}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read().decode())["status"]["state"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def gauge(text, name, job):
    m = re.search(rf'^{name}{{[^}}]*job_id="{re.escape(job)}"[^}}]*}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def run_job(coord, name, spec, out_dir):
    path = os.path.join(coord.work, f"{name}.yaml")
    with open(path, "w") as f:
        json.dump(spec, f)
    job = coord.ftctl("submit", "-f", path, "-o", "name").stdout.strip()
    log(f"job {name}: {job}")
    samples, state = {}, ""
    t0 = time.time()
    while time.time() - t0 < 1200:
        text = coord.metrics()
        step = gauge(text, "ftd_job_step", job)
        if step and step not in samples:
            samples[int(step)] = {k: gauge(text, f"ftd_job_{k}", job) for k in
                                  ("tokens_per_second_per_gpu", "model_tflops_per_gpu", "mfu_ratio",
                                   "peak_memory_bytes", "reserved_memory_bytes", "loss")}
        state = coord.job_state(job)
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.03)
    logs = coord.ftctl("logs", job, "--rank", "0", check=False).stdout
    with open(os.path.join(out_dir, f"{name}.log"), "w") as f:
        f.write(logs)
    losses = [float(x) for x in re.findall(r"^(?:\[rank 0\] )?step \d+/\d+ loss ([0-9.eE+-]+)", logs, re.M)]
    times = [float(x) for x in re.findall(r" step_time ([0-9.]+)s", logs)]
    tps = [float(x) for x in re.findall(r" tokens/s ([0-9.]+) ", logs)]
    timed = {s: v for s, v in samples.items() if s > WARMUP}
    res = dict(name=name, job=job, state=state, samples=samples, losses=losses[:5], step_times=times)
    # Every timed step's line (ftctl logs) for the medians; /metrics as the coordinator exposes the
    # latest step (sampled while the job runs: the steps it caught are listed).
    if len(times) > WARMUP:
        step_s = statistics.median(times[WARMUP:])
        ratio = statistics.median(v["model_tflops_per_gpu"] / v["tokens_per_second_per_gpu"]
                                  for v in samples.values() if v["tokens_per_second_per_gpu"])
        res.update(step_ms=1e3 * step_s, tps=statistics.median(tps[WARMUP:]),
                   tflops=statistics.median(tps[WARMUP:]) * ratio, mfu=statistics.median(tps[WARMUP:]) * ratio / 989)
    if samples:
        res.update(peak_gib=max(v["peak_memory_bytes"] for v in samples.values()) / 2**30,
                   metrics_tps=statistics.median(v["tokens_per_second_per_gpu"] for v in (timed or samples).values()),
                   metrics_mfu=statistics.median(v["mfu_ratio"] for v in (timed or samples).values()),
                   sampled_steps=sorted(samples))
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(res, f)
    # A checkpoint with its training state is ~3x the weights (18 GB at 4 layers): the GPU
    # machine's disk holds few, so each job's output goes once it has been read.
    subprocess.run(["rm", "-rf", spec["output"]])
    log(f"  {state}: " + json.dumps({k: res.get(k) for k in ("tps", "step_ms", "tflops", "mfu", "peak_gib", "metrics_tps",
                                                              "sampled_steps", "losses")}))
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, nargs="+", default=[4])
    p.add_argument("--steps", type=int, default=11, help="optimizer steps of each job (the first 3 untimed)")
    p.add_argument("--hf-steps", type=int, default=8, help="timed steps of the HF baseline and ftd-bench")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--unchanged", action="store_true")
    p.add_argument("--family", default="qwen3_moe", choices=["qwen3_moe", "deepseek_v3", "mixtral", "gpt_oss", "nemotron_h"],
                   help="layer shape (bench/hf_v5_baseline.py --family): Qwen3-30B-A3B, Moonlight-16B-A3B, Mixtral-8x7B, "
                        "GPT-OSS-20B, Nemotron Nano 3 (30B-A3B)")
    p.add_argument("--clips", type=float, nargs="+", default=[1.0, 0.0], help="grad_clip of each job (1.0: the default spec)")
    p.add_argument("--experts", default="", help="backends.experts of the jobs and ftd-bench (empty: the spec's default)")
    p.add_argument("--recompute-expert-grads", action="store_true",
                   help="also, per clip, a job with parallelism.recompute_expert_grads (and backends.experts ftd)")
    p.add_argument("--precisions", nargs="+", default=[""],
                   help="the jobs' and ftd-bench's precision, one run of each per clip (empty: the spec's default)")
    p.add_argument("--prompt-fraction", type=float, default=0.0,
                   help="labels of this leading fraction of the row ignored (-100), as a chat row's prompt: in the "
                        "HF baseline, the jobs' data and ftd-bench alike")
    a = p.parse_args()
    prompt = ["--prompt-fraction", a.prompt_fraction] if a.prompt_fraction else []
    work = os.path.join("/tmp", "ftd-service-work")
    subprocess.run(["rm", "-rf", work])
    # The roots: base models shared read-only, data and outputs in the tenant's namespace.
    models, data_dir, outputs = (os.path.join(work, d) for d in ("models", "datasets/default", "outputs/default"))
    for d in (models, data_dir, outputs):
        os.makedirs(d)
    coord = Coordinator(a.bin, work)
    rows = []
    try:
        for L in a.layers:
            init = os.path.join(models, f"init-{a.family}-{L}")
            hf = run([sys.executable, "bench/hf_v5_baseline.py", "--family", a.family, "--layers", L, "--seq", a.seq, "--steps",
                      a.hf_steps, "--warmup", WARMUP, "--save-init", init] + prompt, f"{a.out}/hf-{a.family}-{L}.err")
            hf = last_json(hf.stdout) or {}
            log(f"HF v5, {a.family}, {L} layers: {json.dumps(hf)}")
            if not os.path.exists(os.path.join(init, "config.json")):
                raise RuntimeError(f"the HF baseline wrote no checkpoint to {init}: see {a.out}/hf-{a.family}-{L}.err")
            with open(os.path.join(init, "config.json")) as f:
                vocab = json.load(f)["vocab_size"]
            # The baseline's input every step: torch.randint(0, V, (1, S), generator seed 1234).
            ids = torch.randint(0, vocab, (1, a.seq), generator=torch.Generator().manual_seed(1234))[0].tolist()
            data = os.path.join(data_dir, f"data-{L}.jsonl")
            record = {"input_ids": ids}
            if a.prompt_fraction:
                masked = int(a.prompt_fraction * a.seq)  # as the baseline's labels
                record["labels"] = [-100] * masked + ids[masked:]
            with open(data, "w") as f:
                for _ in range(a.steps):
                    f.write(json.dumps(record) + "\n")
            jobs = {}
            variants = [(clip, False, prec) for prec in a.precisions for clip in a.clips]
            if a.recompute_expert_grads:
                variants += [(clip, True, "") for clip in a.clips]
            for clip, recompute, prec in variants:
                label = f"{clip:g}" + (", recompute_expert_grads" if recompute else "") + (f", precision {prec}" if prec else "")
                name = f"service-{a.family}-{L}-clip{clip:g}" + ("-recompute" if recompute else "") + (f"-{prec}" if prec else "")
                spec = {"base_model": init, "datasets": {"train": data, "format": "jsonl_tokens"},
                        "output": os.path.join(outputs, name),
                        "hyperparameters": {"max_steps": a.steps, "global_batch": 1, "micro_batch": 1,
                                            "seq_len": a.seq, "lr": 1e-5, "schedule": "constant",
                                            "grad_clip": clip},
                        "resources": {"nodes": 1, "gpus_per_node": 1}}
                if clip == 1.0:
                    del spec["hyperparameters"]["grad_clip"]  # the default
                if a.experts:
                    spec["backends"] = {"experts": a.experts}
                if recompute:
                    spec["backends"] = {"experts": "ftd"}
                    spec["parallelism"] = {"recompute_expert_grads": True}
                if prec:
                    spec["precision"] = prec
                jobs[label] = run_job(coord, name, spec, a.out)
            bench = {}
            for prec in a.precisions:
                for clip in a.clips:
                    key = f"{clip:g}" + (f", precision {prec}" if prec else "")
                    r = run([f"{a.bin}/ftd-bench", "--model", init, "--seq", a.seq, "--steps", a.hf_steps,
                             "--warmup", WARMUP, "--grad-clip", clip] + (["--experts", a.experts] if a.experts else []) +
                            (["--precision", prec] if prec else []) + prompt,
                            f"{a.out}/bench-{a.family}-{L}-clip{clip:g}{'-' + prec if prec else ''}.err")
                    bench[key] = last_json(r.stdout) or {}
                    log(f"ftd-bench, {a.family}, {L} layers, clip {key}: {json.dumps(bench[key])}")
            unchanged = {}
            if a.unchanged:
                r = run([sys.executable, "bench/hf_v5_baseline.py", "--model", init, "--seq", a.seq, "--steps", 17,
                         "--warmup", 3, "--report-unchanged"], f"{a.out}/hf-unchanged-{L}.err")
                unchanged["HF v5 (bf16 weights and moments)"] = (last_json(r.stdout) or {}).get("unchanged")
                for policy in ("compact", "compact_sr", "fp32_master", "bf16_pure"):
                    r = run([f"{a.bin}/ftd-bench", "--model", init, "--seq", a.seq, "--steps", 17, "--warmup", 3,
                             "--precision", policy, "--report-unchanged"], f"{a.out}/unchanged-{L}-{policy}.err")
                    unchanged[f"ftd {policy}"] = (last_json(r.stdout) or {}).get("unchanged")
                log(f"unchanged after 20 steps at lr 1e-5, {L} layers: {json.dumps(unchanged)}")
            rows.append(dict(family=a.family, layers=L, hf=hf, jobs=jobs,
                             bench=bench, unchanged=unchanged))
            subprocess.run(["rm", "-rf", init])
    finally:
        coord.stop()
        with open(os.path.join(a.out, f"service-{a.family}.json"), "w") as f:
            json.dump(rows, f, default=str)
    print_table(rows)
    ok = all(j.get("state") == "SUCCEEDED" for r in rows for j in r["jobs"].values())
    sys.exit(0 if ok else 1)


def print_table(rows):
    print("\n| family | layers | path | TPS/GPU | step ms | TFLOP/s | MFU | peak GiB | TPS x HF | mem x HF | first losses | /metrics TPS/GPU (steps sampled) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        hf = r["hf"]
        base_tps, base_mem = hf.get("tps"), hf.get("peak_gib")

        def line(path, tps, step_ms, tflops, mfu, peak, losses, metrics=""):
            x = f"{tps / base_tps:.3f}" if tps and base_tps else "-"
            m = f"{peak / base_mem:.3f}" if peak and base_mem else "-"
            f = lambda v, d: f"{v:,.{d}f}" if isinstance(v, (int, float)) else "-"
            print(f"| {r.get('family', 'qwen3_moe')} | {r['layers']} | {path} | {f(tps, 0)} | {f(step_ms, 1)} | {f(tflops, 1)} | {f(mfu, 3)} | "
                  f"{f(peak, 2)} | {x} | {m} | {', '.join(f'{l:.5f}' for l in losses or [])} | {metrics} |")

        line("HF v5 (bench/hf_v5_baseline.py)", base_tps, hf.get("step_ms"), hf.get("tflops"),
             (hf.get("tflops") or 0) / 989, base_mem, hf.get("losses"))
        for clip, j in r["jobs"].items():
            sampled = f"{j['metrics_tps']:,.0f} ({', '.join(map(str, j.get('sampled_steps', [])))})" if j.get("metrics_tps") else ""
            line(f"service: ftd --local-worker + ftctl, grad_clip {clip}", j.get("tps"), j.get("step_ms"),
                 j.get("tflops"), j.get("mfu"), j.get("peak_gib"), j.get("losses"), sampled)
        for clip, b in r["bench"].items():
            line(f"ftd-bench, grad_clip {clip}", b.get("tps"), b.get("step_ms"), b.get("tflops"), b.get("mfu"),
                 b.get("peak_gib"), b.get("losses"))
    for r in rows:
        if r["unchanged"]:
            print(f"\nParameters left exactly unchanged by 20 steps at lr 1e-5 ({r['layers']} layers): "
                  + "; ".join(f"{k}: {json.dumps(v)}" for k, v in r["unchanged"].items()))


if __name__ == "__main__":
    main()
