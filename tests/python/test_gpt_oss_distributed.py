"""GPT-OSS through the real binary on CPU with Gloo: `ftd-train launch --nproc N -- train` with
ep in {1, 2, 4} (dp = N as well: EP is orthogonal to DP) against one process training on the same
global batch (tiny-gpt-oss: 8 experts with biases, attention sinks, sliding windows of 8 over
packed rows of 48). Its checkpoint keeps every layer's experts in one fused tensor, so under
expert parallelism the experts are gathered and rank 0 writes one file; that file is then the
single process's, and training resumes from it on another ep."""
import json

import pytest
import torch

from conftest import clean_env, run
from test_distributed import load_checkpoint, losses

STEPS = 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt_oss_dist")
    g = torch.Generator().manual_seed(17)
    with open(d / "data.jsonl", "w") as f:
        for _ in range(24):
            n = int(torch.randint(10, 40, (1,), generator=g))
            f.write(json.dumps({"input_ids": torch.randint(0, 512, (n,), generator=g).tolist()}) + "\n")
    return d


def train(ftd_train, workdir, name, nproc=1, ep=1):
    model = workdir / "tiny-gpt-oss"
    if not model.exists():
        run([ftd_train, "init-model", "--preset", "tiny-gpt-oss", "--dtype", "fp32", "--seed", "3", "--out", model])
    # adam_eps 1e-6: see test_distributed.py (the ranks sum gradients in another order).
    spec = {"base_model": str(model), "datasets": {"train": str(workdir / "data.jsonl")},
            "output": str(workdir / name),
            "hyperparameters": {"max_steps": STEPS, "global_batch": 4, "micro_batch": 1, "seq_len": 48, "lr": 1e-3,
                                "schedule": "cosine", "warmup_steps": 1, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, "adam_eps": 1e-6},
            "parallelism": {"ep_size": ep},
            "device": "cpu", "dtype": "fp32", "precision": "fp32_master"}
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(spec))
    cmd = [ftd_train, "train", "--spec", path]
    if nproc > 1:
        cmd = [ftd_train, "launch", "--nproc", nproc, "--"] + cmd[1:]
    res = run(cmd, env=clean_env(), timeout=600)
    return res.stdout, workdir / name / f"checkpoint-{STEPS}"


@pytest.mark.parametrize("nproc,ep", [(2, 1), (2, 2), (4, 4)])
def test_ep_equals_one_process(ftd_train, workdir, nproc, ep):
    single_out, single_dir = train(ftd_train, workdir, "single")
    single = load_checkpoint(single_dir)
    init = load_checkpoint(workdir / "tiny-gpt-oss")
    ref_losses = losses(single_out)
    assert len(ref_losses) == STEPS, single_out
    stdout, ckpt_dir = train(ftd_train, workdir, f"n{nproc}_ep{ep}", nproc=nproc, ep=ep)
    assert f"dp {nproc}, ep {ep}" in stdout, stdout
    got = losses(stdout)
    assert len(got) == STEPS, stdout
    assert max(abs(a - b) for a, b in zip(got, ref_losses)) <= 1e-5, f"ep={ep}: {got}\nsingle: {ref_losses}"
    # One file with every expert, whatever the ep.
    assert (ckpt_dir / "model.safetensors").exists() and not (ckpt_dir / "model.safetensors.index.json").exists()
    ckpt = load_checkpoint(ckpt_dir)
    assert sorted(ckpt) == sorted(single)
    assert ckpt["model.layers.0.mlp.experts.gate_up_proj"].shape[0] == 8
    worst = max(((ckpt[k] - single[k]).abs().max().item(), k) for k in single)
    assert worst[0] <= 1e-6, f"ep={ep}: {worst[1]} differs by {worst[0]:.2e}"
    # It trained: the experts and their biases moved.
    for k in ("model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.experts.gate_up_proj_bias",
              "model.layers.0.self_attn.sinks", "model.layers.0.mlp.router.bias"):
        assert (ckpt[k] - init[k]).abs().max().item() > 1e-5, k
