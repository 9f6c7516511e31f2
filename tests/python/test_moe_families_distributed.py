"""Mixtral, Qwen2-MoE and OLMoE through the real binary on CPU with Gloo: `ftd-train launch
--nproc 2 -- train` with dp = 2 and ep in {1, 2} against one process training on the same global
batch (the tiny presets: Mixtral's w1/w3/w2 experts, Qwen2-MoE's gated shared expert and qkv
biases beside a dense layer, OLMoE's full-width q/k norms and clip_qkv)."""
import json

import pytest
import torch

from conftest import clean_env, run
from test_distributed import load_checkpoint, losses

NPROC = 2
STEPS = 3
PRESETS = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-olmoe"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("families_dist")
    g = torch.Generator().manual_seed(17)
    with open(d / "data.jsonl", "w") as f:
        for _ in range(24):
            n = int(torch.randint(10, 40, (1,), generator=g))
            f.write(json.dumps({"input_ids": torch.randint(0, 512, (n,), generator=g).tolist()}) + "\n")
    return d


def train(ftd_train, workdir, preset, name, nproc=1, ep=1):
    model = workdir / preset
    if not model.exists():
        run([ftd_train, "init-model", "--preset", preset, "--dtype", "fp32", "--seed", "3", "--out", model])
    # adam_eps 1e-6: see test_distributed.py (the ranks sum gradients in another order).
    spec = {"base_model": str(model), "datasets": {"train": str(workdir / "data.jsonl")},
            "output": str(workdir / f"{preset}_{name}"),
            "hyperparameters": {"max_steps": STEPS, "global_batch": 4, "micro_batch": 1, "seq_len": 48, "lr": 1e-3,
                                "schedule": "cosine", "warmup_steps": 1, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, "adam_eps": 1e-6},
            "parallelism": {"ep_size": ep},
            "device": "cpu", "dtype": "fp32", "precision": "fp32_master"}
    path = workdir / f"{preset}_{name}.json"
    path.write_text(json.dumps(spec))
    cmd = [ftd_train, "train", "--spec", path]
    if nproc > 1:
        cmd = [ftd_train, "launch", "--nproc", nproc, "--"] + cmd[1:]
    res = run(cmd, env=clean_env(), timeout=600)
    return res.stdout, load_checkpoint(workdir / f"{preset}_{name}" / f"checkpoint-{STEPS}")


def assert_ep_run_equals_one_process(ftd_train, workdir, preset, nproc, ep):
    """`launch --nproc nproc` with ep against one process on the same global batch: the same
    losses (1e-5) and checkpoint (every tensor within 1e-6). Returns (name of the run, its
    checkpoint, the single process's, the initial one)."""
    single_out, single = train(ftd_train, workdir, preset, "single")
    init = load_checkpoint(workdir / preset)
    ref_losses = losses(single_out)
    assert len(ref_losses) == STEPS, single_out
    name = f"n{nproc}_ep{ep}"
    stdout, ckpt = train(ftd_train, workdir, preset, name, nproc=nproc, ep=ep)
    assert f"dp {nproc}, ep {ep}" in stdout, stdout
    got = losses(stdout)
    assert len(got) == STEPS, stdout
    assert max(abs(a - b) for a, b in zip(got, ref_losses)) <= 1e-5, f"ep={ep}: {got}\nsingle: {ref_losses}"
    assert sorted(ckpt) == sorted(single)
    worst = max(((ckpt[k] - single[k]).abs().max().item(), k) for k in single)
    assert worst[0] <= 1e-6, f"ep={ep}: {worst[1]} differs by {worst[0]:.2e}"
    return name, ckpt, single, init


@pytest.mark.parametrize("preset", PRESETS)
def test_ep1_and_ep2_equal_one_process(ftd_train, workdir, preset):
    single = train(ftd_train, workdir, preset, "single")
    init = load_checkpoint(workdir / preset)
    ref_losses = losses(single[0])
    assert len(ref_losses) == STEPS, single[0]
    for ep in (1, 2):
        stdout, ckpt = train(ftd_train, workdir, preset, f"ep{ep}", nproc=NPROC, ep=ep)
        assert f"dp 2, ep {ep}" in stdout, stdout
        got = losses(stdout)
        assert len(got) == STEPS, stdout
        assert max(abs(a - b) for a, b in zip(got, ref_losses)) <= 1e-5, f"ep={ep}: {got}\nsingle: {ref_losses}"
        assert sorted(ckpt) == sorted(single[1])
        worst = max(((ckpt[k] - single[1][k]).abs().max().item(), k) for k in single[1])
        assert worst[0] <= 1e-6, f"ep={ep}: {worst[1]} differs by {worst[0]:.2e}"
        # It trained: the weights moved.
        assert max((ckpt[k] - init[k]).abs().max().item() for k in init) > 1e-4
