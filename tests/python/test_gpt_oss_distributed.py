"""GPT-OSS through the real binary on CPU with Gloo: `ftd-train launch --nproc N -- train` with
ep in {1, 2, 4} (dp = N as well: EP is orthogonal to DP) against one process training on the same
global batch (tiny-gpt-oss: 8 experts with biases, attention sinks, sliding windows of 8 over
packed rows of 48). Its checkpoint keeps every layer's experts in one fused tensor, so under
expert parallelism the experts are gathered and rank 0 writes one file."""
import pytest

from test_moe_families_distributed import STEPS, assert_ep_run_equals_one_process, workdir  # noqa: F401 (fixture)

PRESET = "tiny-gpt-oss"


@pytest.mark.parametrize("nproc,ep", [(2, 1), (2, 2), (4, 4)])
def test_ep_equals_one_process(ftd_train, workdir, nproc, ep):  # noqa: F811
    name, ckpt, single, init = assert_ep_run_equals_one_process(ftd_train, workdir, PRESET, nproc, ep)
    # One file with every expert, whatever the ep.
    ckpt_dir = workdir / f"{PRESET}_{name}" / f"checkpoint-{STEPS}"
    assert (ckpt_dir / "model.safetensors").exists() and not (ckpt_dir / "model.safetensors.index.json").exists()
    assert ckpt["model.layers.0.mlp.experts.gate_up_proj"].shape[0] == 8
    # It trained: the experts, their biases, the sinks and the router's bias moved.
    for k in ("model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.experts.gate_up_proj_bias",
              "model.layers.0.self_attn.sinks", "model.layers.0.mlp.router.bias"):
        assert (ckpt[k] - init[k]).abs().max().item() > 1e-5, k
