"""Nemotron-H through the real binary on CPU with Gloo: `ftd-train launch --nproc N -- train` with
ep in {1, 2, 4} (dp = N as well: EP is orthogonal to DP) against one process training on the same
global batch (tiny-nemotron-h: Mamba2 layers over packed rows of 48 with chunk 16, attention, a
relu^2 MLP and two MoE layers with 8 relu^2 experts behind LatentMoE projections, a shared expert
and group-limited routing). The checkpoint keeps HF's backbone.* and per-expert up/down keys."""
import pytest

from test_distributed import load_checkpoint, losses
from test_moe_families_distributed import STEPS, train, workdir  # noqa: F401 (workdir: the fixture)

PRESET = "tiny-nemotron-h"


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
    assert sorted(ckpt) == sorted(single)
    assert "backbone.layers.1.mixer.experts.7.up_proj.weight" in ckpt
    worst = max(((ckpt[k] - single[k]).abs().max().item(), k) for k in single)
    assert worst[0] <= 1e-6, f"ep={ep}: {worst[1]} differs by {worst[0]:.2e}"
    # It trained: the experts, the latent projections and the Mamba2 parameters moved.
    for k in ("backbone.layers.1.mixer.experts.0.down_proj.weight", "backbone.layers.3.mixer.fc1_latent_proj.weight",
              "backbone.layers.0.mixer.A_log", "backbone.layers.5.mixer.conv1d.weight",
              "backbone.layers.0.mixer.dt_bias"):
        assert (ckpt[k] - init[k]).abs().max().item() > 1e-5, k
