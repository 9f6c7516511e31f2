"""GPT-OSS through the real binary on CPU with Gloo: `ftd-train launch --nproc N -- train` with
ep in {1, 2, 4} (dp = N as well: EP is orthogonal to DP) against one process training on the same
global batch (tiny-gpt-oss: 8 experts with biases, attention sinks, sliding windows of 8 over
packed rows of 48). Its checkpoint keeps every layer's experts in one fused tensor, so under
expert parallelism the experts are gathered and rank 0 writes one file."""
import pytest

from test_distributed import load_checkpoint, losses
from test_moe_families_distributed import STEPS, train, workdir  # noqa: F401 (workdir: the fixture)

PRESET = "tiny-gpt-oss"


@pytest.mark.parametrize("nproc,ep", [(2, 1), (2, 2), (4, 4)])
def test_ep_equals_one_process(ftd_train, workdir, nproc, ep):  # noqa: F811
    single_out, single = train(ftd_train, workdir, PRESET, "single")
    init = load_checkpoint(workdir / PRESET)
    ref_losses = losses(single_out)
    assert len(ref_losses) == STEPS, single_out
    name = f"n{nproc}_ep{ep}"
    stdout, ckpt = train(ftd_train, workdir, PRESET, name, nproc=nproc, ep=ep)
    assert f"dp {nproc}, ep {ep}" in stdout, stdout
    got = losses(stdout)
    assert len(got) == STEPS, stdout
    assert max(abs(a - b) for a, b in zip(got, ref_losses)) <= 1e-5, f"ep={ep}: {got}\nsingle: {ref_losses}"
    # One file with every expert, whatever the ep.
    ckpt_dir = workdir / f"{PRESET}_{name}" / f"checkpoint-{STEPS}"
    assert (ckpt_dir / "model.safetensors").exists() and not (ckpt_dir / "model.safetensors.index.json").exists()
    assert sorted(ckpt) == sorted(single)
    assert ckpt["model.layers.0.mlp.experts.gate_up_proj"].shape[0] == 8
    worst = max(((ckpt[k] - single[k]).abs().max().item(), k) for k in single)
    assert worst[0] <= 1e-6, f"ep={ep}: {worst[1]} differs by {worst[0]:.2e}"
    # It trained: the experts, their biases, the sinks and the router's bias moved.
    for k in ("model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.experts.gate_up_proj_bias",
              "model.layers.0.self_attn.sinks", "model.layers.0.mlp.router.bias"):
        assert (ckpt[k] - init[k]).abs().max().item() > 1e-5, k
