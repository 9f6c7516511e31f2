"""backends.attention (sdpa | flash | cudnn) and backends.experts (grouped_mm | ftd | loop) change what
`ftd-train train` runs, and its log says which: on the CPU, the CUDA-only attention kernels are
refused by field name before any step and experts `loop` trains (the same losses as grouped_mm,
whose CPU path is the same per-expert loop); on a GPU, every combination trains the same tiny
model on packed rows (flash: varlen; cudnn: the document mask) to the same losses as sdpa within
bf16 noise, and loop turns CUDA graphs off."""
import json
import re

import pytest
import torch

from conftest import clean_env, run

LOSS_RE = re.compile(r"step (\d+)/\d+ loss ([0-9.eE+-]+)")
STEPS = 4


@pytest.fixture(scope="module")
def work(tmp_path_factory, ftd_train):
    d = tmp_path_factory.mktemp("backends")
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "4", "--out", d / "model"])
    g = torch.Generator().manual_seed(6)
    with open(d / "train.jsonl", "w") as f:  # documents shorter than seq_len: packed rows
        for _ in range(48):
            k = int(torch.randint(8, 30, (1,), generator=g))
            f.write(json.dumps({"input_ids": torch.randint(0, 512, (k,), generator=g).tolist()}) + "\n")
    return d


def train(ftd_train, d, name, attention, experts, device="cpu", dtype="fp32", check=True):
    spec = {"base_model": str(d / "model"), "datasets": {"train": str(d / "train.jsonl")}, "output": str(d / name),
            "hyperparameters": {"max_steps": STEPS, "global_batch": 4, "micro_batch": 2, "seq_len": 64, "lr": 1e-3,
                                "seed": 5},
            "backends": {"attention": attention, "experts": experts}, "device": device, "dtype": dtype}
    path = d / f"{name}.json"
    path.write_text(json.dumps(spec))
    cmd = [ftd_train, "train", "--spec", path]
    if check:
        res = run(cmd, env=clean_env(), timeout=600)
    else:
        import subprocess
        res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=clean_env(), timeout=600)
    return res, [float(m.group(2)) for m in LOSS_RE.finditer(res.stdout)]


def backends_line(stdout):
    (line,) = [x for x in stdout.splitlines() if x.startswith("backends: ")]
    return line


def test_cpu_experts_loop_trains_and_says_so(ftd_train, work):
    grouped, grouped_losses = train(ftd_train, work, "grouped", "sdpa", "grouped_mm")
    loop, loop_losses = train(ftd_train, work, "loop", "sdpa", "loop")
    assert len(loop_losses) == STEPS and loop_losses == grouped_losses  # on the CPU both are per-expert matmuls
    assert "experts loop (one matmul per expert, no CUDA graphs)" in backends_line(loop.stdout)
    assert "experts grouped_mm (at::_grouped_mm on CUDA" in backends_line(grouped.stdout)
    assert "attention sdpa (SDPA choosing its kernel" in backends_line(grouped.stdout)
    own, own_losses = train(ftd_train, work, "own", "sdpa", "ftd")  # the CPU takes the per-expert loop too
    assert own_losses == grouped_losses
    assert "experts ftd (ftd's Hopper grouped GEMM on sm90 (bf16)" in backends_line(own.stdout)


@pytest.mark.parametrize("attention", ["flash", "cudnn"])
def test_cpu_refuses_cuda_attention_kernels_by_name(ftd_train, work, attention):
    res, losses = train(ftd_train, work, f"cpu-{attention}", attention, "grouped_mm", check=False)
    assert res.returncode != 0 and not losses, res.stdout
    assert f"backends.attention {attention}: a CUDA kernel, and this rank runs on the CPU (use sdpa)" in res.stderr, \
        res.stderr


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_gpu_every_backend_trains_like_sdpa(ftd_train, work):
    base, base_losses = train(ftd_train, work, "gpu-sdpa", "sdpa", "grouped_mm", device="cuda", dtype="bf16")
    assert len(base_losses) == STEPS
    for attention, experts, says in [("flash", "grouped_mm", "restricted to FlashAttention-2"),
                                     ("cudnn", "grouped_mm", "restricted to cuDNN attention"),
                                     ("sdpa", "loop", "experts loop (one matmul per expert"),
                                     ("sdpa", "ftd", "experts ftd (ftd's Hopper grouped GEMM")]:
        res, losses = train(ftd_train, work, f"gpu-{attention}-{experts}", attention, experts, device="cuda",
                            dtype="bf16")
        assert says in backends_line(res.stdout)
        assert len(losses) == STEPS
        for ours, theirs in zip(losses, base_losses):
            assert abs(ours - theirs) <= 2e-2 * abs(theirs), (attention, experts, losses, base_losses)


@needs_cuda
def test_gpu_sink_layers_choose_their_kernel_and_flash_refuses_masks(ftd_train, tmp_path):
    """GPT-OSS's sink layers: sdpa (the engine's choice) and flash run FlashAttention-2 with the sink
    on its outputs, cudnn the SDPA form with masks; the losses agree. A sliding-window model without
    sinks is refused flash (SDPA's FlashAttention-2 takes no window mask)."""
    run([ftd_train, "init-model", "--preset", "tiny-gpt-oss", "--dtype", "bf16", "--seed", "4", "--out",
         tmp_path / "model"])
    g = torch.Generator().manual_seed(6)
    with open(tmp_path / "train.jsonl", "w") as f:  # shorter than seq_len (packed), longer than the window
        for _ in range(16):
            k = int(torch.randint(12, 40, (1,), generator=g))
            f.write(json.dumps({"input_ids": torch.randint(0, 512, (k,), generator=g).tolist()}) + "\n")
    runs = {a: train(ftd_train, tmp_path, f"gpt-oss-{a}", a, "grouped_mm", device="cuda", dtype="bf16")
            for a in ("sdpa", "flash", "cudnn")}
    flash_says = "attention sinks: FlashAttention-2 with the sink applied to its outputs"
    assert flash_says in runs["sdpa"][0].stdout and flash_says in runs["flash"][0].stdout
    assert "attention sinks: SDPA with each sink as one more key" in runs["cudnn"][0].stdout
    for a, (_, losses) in runs.items():
        assert len(losses) == STEPS, a
        for ours, theirs in zip(losses, runs["cudnn"][1]):
            assert abs(ours - theirs) <= 2e-2 * abs(theirs), (a, losses, runs["cudnn"][1])

    run([ftd_train, "init-model", "--preset", "tiny-mixtral", "--dtype", "bf16", "--seed", "4", "--out",
         tmp_path / "mixtral"])
    cfg = json.loads((tmp_path / "mixtral" / "config.json").read_text())
    cfg["sliding_window"] = 16
    (tmp_path / "mixtral" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model").rename(tmp_path / "gpt-oss")
    (tmp_path / "mixtral").rename(tmp_path / "model")
    res, losses = train(ftd_train, tmp_path, "mixtral-flash", "flash", "grouped_mm", device="cuda", dtype="bf16",
                        check=False)
    assert res.returncode != 0 and not losses
    assert "backends.attention flash: this mixtral model's sliding-window layers need an attention mask" in \
        res.stderr, res.stderr


def test_recompute_expert_grads_is_refused_where_it_cannot_take_effect(ftd_train, work):
    # parallelism.recompute_expert_grads needs ftd's grouped GEMM on a GPU: a CPU rank refuses it by
    # name before any step instead of training with the expert gradients formed as usual.
    spec = {"base_model": str(work / "model"), "datasets": {"train": str(work / "train.jsonl")},
            "output": str(work / "recompute"),
            "hyperparameters": {"max_steps": 2, "global_batch": 2, "micro_batch": 2, "seq_len": 64, "lr": 1e-3},
            "backends": {"experts": "ftd"}, "parallelism": {"recompute_expert_grads": True}, "device": "cpu"}
    path = work / "recompute.json"
    path.write_text(json.dumps(spec))
    import subprocess
    res = subprocess.run([str(ftd_train), "train", "--spec", str(path)], capture_output=True, text=True,
                         env=clean_env(), timeout=600)
    assert res.returncode != 0, res.stdout
    assert "parallelism.recompute_expert_grads: needs ftd's grouped GEMM" in res.stderr, res.stderr
    assert not LOSS_RE.search(res.stdout), res.stdout
