"""DeepSeek-V3 through the real binary on CPU with Gloo: `ftd-train launch --nproc 4 -- train`
with dp = 4 and ep in {1, 2, 4}, and ZeRO-3 (ep 2), against one process training on the same
global batch (tiny-deepseek-v3 preset: q_lora_rank, 4 groups of which 2, 2 shared experts, a
dense first layer, YaRN); the aux-loss-free bias update moves the biases alike on every rank."""
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import clean_env, run
from test_distributed import load_checkpoint, losses

NPROC = 4
STEPS = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, ftd_train):
    d = tmp_path_factory.mktemp("dsv3_dist")
    run([ftd_train, "init-model", "--preset", "tiny-deepseek-v3", "--dtype", "fp32", "--seed", "3", "--out",
         d / "model"])
    g = torch.Generator().manual_seed(13)
    with open(d / "data.jsonl", "w") as f:
        for _ in range(40):
            n = int(torch.randint(10, 40, (1,), generator=g))
            f.write(json.dumps({"input_ids": torch.randint(0, 512, (n,), generator=g).tolist()}) + "\n")
    return d


def write_spec(workdir, name, ep=1, zero_stage=2, **hp):
    # adam_eps 1e-6: see test_distributed.py (the ranks sum gradients in another order).
    spec = {"base_model": str(workdir / "model"), "datasets": {"train": str(workdir / "data.jsonl")},
            "output": str(workdir / name),
            "hyperparameters": {"max_steps": STEPS, "global_batch": 8, "micro_batch": 1, "seq_len": 48, "lr": 1e-3,
                                "schedule": "cosine", "warmup_steps": 1, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, "adam_eps": 1e-6, **hp},
            "parallelism": {"ep_size": ep, "zero_stage": zero_stage},
            "device": "cpu", "dtype": "fp32", "precision": "fp32_master"}
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


class Runs:
    """Each run once, on first use (several tests compare against the same ones)."""

    def __init__(self, ftd_train, workdir):
        self.ftd_train, self.workdir = ftd_train, workdir
        self._cache = {}

    def get(self, name, nproc=1, **spec):
        if name not in self._cache:
            path = write_spec(self.workdir, name, **spec)
            cmd = [self.ftd_train, "train", "--spec", path]
            if nproc > 1:
                cmd = [self.ftd_train, "launch", "--nproc", nproc, "--"] + cmd[1:]
            res = run(cmd, env=clean_env(), timeout=600)
            self._cache[name] = (res.stdout, load_checkpoint(self.workdir / name / f"checkpoint-{STEPS}"))
        return self._cache[name]


@pytest.fixture(scope="module")
def runs(ftd_train, workdir):
    return Runs(ftd_train, workdir)


def assert_same(ours, ref, what):
    (stdout, ckpt), (ref_stdout, ref_ckpt) = ours, ref
    a, b = losses(stdout), losses(ref_stdout)
    assert len(a) == STEPS and len(b) == STEPS, stdout
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5, f"{what}: {a}\nsingle: {b}"
    assert sorted(ckpt) == sorted(ref_ckpt)
    worst = max(((ckpt[k] - ref_ckpt[k]).abs().max().item(), k) for k in ref_ckpt)
    assert worst[0] <= 1e-6, f"{what}: {worst[1]} differs by {worst[0]:.2e}"


@pytest.mark.parametrize("ep", [1, 2, 4])
def test_ep_and_dp_equal_one_process(runs, workdir, ep):
    ref = runs.get("single")
    ours = runs.get(f"ep{ep}", nproc=NPROC, ep=ep)
    assert_same(ours, ref, f"ep={ep}")
    assert "ZeRO-2 over dp" in ours[0]
    # It trained: the weights moved.
    init = load_checkpoint(workdir / "model")
    assert max((ours[1][k] - init[k]).abs().max().item() for k in init) > 1e-3


def test_zero3_equals_zero2_and_one_process(runs):
    ref = runs.get("single")
    zero3 = runs.get("ep2_zero3", nproc=NPROC, ep=2, zero_stage=3)
    assert "ZeRO-3 over dp" in zero3[0] and "gathered per layer, not resident" in zero3[0]
    assert_same(zero3, ref, "zero_stage 3")
    assert_same(zero3, runs.get("ep2", nproc=NPROC, ep=2), "zero_stage 3 vs 2")


def test_router_bias_update_is_the_same_on_every_layout(runs, workdir):
    """hyperparameters.router_bias_update_speed: the selection biases move (they are not trained
    by gradient), by the global expert load, alike in one process and in 4 ranks with ep 2."""
    single = runs.get("single_bias", router_bias_update_speed=1e-3)
    dist = runs.get("ep2_bias", nproc=NPROC, ep=2, router_bias_update_speed=1e-3)
    assert_same(dist, single, "bias update, ep=2")
    init = load_checkpoint(workdir / "model")
    biases = [k for k in init if k.endswith("e_score_correction_bias")]
    assert len(biases) == 2  # layers 1 and 2 are MoE
    for k in biases:
        steps = (single[1][k] - init[k]) / 1e-3
        # Each step moves each expert's bias by +-speed (0 where its load is exactly the mean).
        assert (steps - steps.round()).abs().max().item() < 1e-3, steps
        assert steps.abs().max().item() > 0.5 and steps.abs().max().item() <= STEPS + 1e-3, steps
        assert torch.equal(single[1][k], dist[1][k]), k
    # Off by default: the plain runs keep the biases as loaded.
    for k in biases:
        assert torch.equal(runs.get("single")[1][k], init[k]), k


def test_bad_zero_stage_is_named(ftd_train, workdir):
    path = write_spec(workdir, "bad_zero", zero_stage=4)
    res = subprocess.run([str(ftd_train), "train", "--spec", str(path)], capture_output=True, text=True)
    assert res.returncode == 2 and "parallelism.zero_stage" in res.stderr, res.stderr
