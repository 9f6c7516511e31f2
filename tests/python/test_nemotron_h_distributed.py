"""Nemotron-H through the real binary on CPU with Gloo: `ftd-train launch --nproc N -- train` with
ep in {1, 2, 4} (dp = N as well: EP is orthogonal to DP) against one process training on the same
global batch (tiny-nemotron-h: Mamba2 layers over packed rows of 48 with chunk 16, attention, a
relu^2 MLP and two MoE layers with 8 relu^2 experts behind LatentMoE projections, a shared expert
and group-limited routing). The checkpoint keeps HF's backbone.* and per-expert up/down keys."""
import pytest

from test_moe_families_distributed import assert_ep_run_equals_one_process, workdir  # noqa: F401 (fixture)

PRESET = "tiny-nemotron-h"


@pytest.mark.parametrize("nproc,ep", [(2, 1), (2, 2), (4, 4)])
def test_ep_equals_one_process(ftd_train, workdir, nproc, ep):  # noqa: F811
    _, ckpt, _, init = assert_ep_run_equals_one_process(ftd_train, workdir, PRESET, nproc, ep)
    assert "backbone.layers.1.mixer.experts.7.up_proj.weight" in ckpt
    # It trained: the experts, the latent projections and the Mamba2 parameters moved.
    for k in ("backbone.layers.1.mixer.experts.0.down_proj.weight", "backbone.layers.3.mixer.fc1_latent_proj.weight",
              "backbone.layers.0.mixer.A_log", "backbone.layers.5.mixer.conv1d.weight",
              "backbone.layers.0.mixer.dt_bias"):
        assert (ckpt[k] - init[k]).abs().max().item() > 1e-5, k
