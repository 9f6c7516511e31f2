"""The engine against HF Transformers' NemotronHForCausalLM (its torch path: no mamba_ssm kernels
here) on tiny checkpoints (CPU, fp32): logits, loss, every gradient (Mamba2's in_proj, conv1d,
A_log, D, dt_bias and gated norm; attention without rope; relu^2 MLPs; the MoE's router,
correction bias, relu^2 experts, shared expert and LatentMoE projections), 5 AdamW steps;
checkpoints (backbone.* keys, per-expert up/down) resaved identically and loadable by
transformers; presets counted as transformers counts them; settings the engine does not
implement refused with an error naming the field."""
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import run
from hf_parity import assert_adamw_steps_match_hf, assert_checkpoint_round_trip, ftd_forward, ids_for, rel

transformers = pytest.importorskip("transformers")
from transformers import NemotronHConfig, NemotronHForCausalLM  # noqa: E402

BASE = dict(vocab_size=211, hidden_size=48, num_attention_heads=4, head_dim=12, max_position_embeddings=512,
            attn_implementation="eager", intermediate_size=40, moe_intermediate_size=24,
            moe_shared_expert_intermediate_size=20)
# Each config mixes Mamba2, attention, MLP and MoE layers differently; the forward sequences
# are 19 tokens (the AdamW steps 33).
CONFIGS = {
    # n_groups 1, chunk 8 (does not divide 19 or 33), no latent, 4 experts top-2, no groups, GQA 2:1.
    "g1_chunk8_dense_experts": dict(layers_block_type=["mamba", "moe", "attention", "mlp", "mamba"],
                                    num_key_value_heads=2, mamba_num_heads=4, mamba_head_dim=8, n_groups=1,
                                    ssm_state_size=8, chunk_size=8, n_routed_experts=4, num_experts_per_tok=2,
                                    routed_scaling_factor=1.5),
    # n_groups 2, chunk 19 (divides 19: one full chunk), LatentMoE (latent 16), expert groups
    # (n_group 4, topk_group 2), MHA, a time_step_limit that clamps.
    "g2_chunk19_latent_grouped": dict(layers_block_type=["moe", "mamba", "attention", "moe", "mamba", "mlp"],
                                      num_key_value_heads=4, mamba_num_heads=8, mamba_head_dim=6, n_groups=2,
                                      ssm_state_size=6, chunk_size=19, n_routed_experts=8, num_experts_per_tok=3,
                                      n_group=4, topk_group=2, moe_latent_size=16, routed_scaling_factor=2.5,
                                      time_step_limit=(0.05, 0.8)),
    # n_groups 4, chunk 4 (several chunks, 19 = 4*4 + 3), LatentMoE, no conv bias, top-1 of 6
    # unnormalised, legacy layer names, GQA 4:1.
    "g4_chunk4_latent_top1": dict(hybrid_override_pattern="M*EMM-E", num_key_value_heads=1, mamba_num_heads=8,
                                  mamba_head_dim=4, n_groups=4, ssm_state_size=5, chunk_size=4, use_conv_bias=False,
                                  n_routed_experts=6, num_experts_per_tok=1, norm_topk_prob=False, moe_latent_size=20,
                                  conv_kernel=3),
}


def make_model(tmp_path, name, seed=0, dtype=torch.float32):
    cfg = NemotronHConfig(**{**BASE, **CONFIGS[name]})
    torch.manual_seed(seed)
    model = NemotronHForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        # Defaults (norms 1, biases 0, D 1, A_log log(1..n), dt_bias 1) would hide a mix-up:
        # randomise them; dt_bias spread so that softplus and the clamp both matter.
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias") and "dt_bias" not in n:
                p.copy_(0.2 * torch.randn_like(p))
            elif n.endswith("dt_bias"):
                p.copy_(torch.randn_like(p))
            elif n.endswith("A_log"):
                p.copy_(0.5 * torch.randn_like(p))
            elif n.endswith(".D"):
                p.copy_(torch.randn_like(p))
            elif ".experts." in n:
                p.normal_(0, 0.2)
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    d = tmp_path / f"nemotron_h_{name}"
    model.save_pretrained(d)
    # transformers 5.25 builds a cache even in training, and its DynamicCache fails when layer 0
    # is not a Mamba2 or attention layer ('DummyLayer' has no get_seq_length): no cache here.
    model.config.use_cache = False
    return model, d


def checkpoint_tensors(named):
    """Tensors named as transformers' model names them, under the checkpoint's names:
    backbone.* for model.*, per-expert up/down keys for the fused experts (up_proj [E, F, K],
    down_proj [E, K, F])."""
    out = {}
    for n, t in named.items():
        if n.startswith("model."):
            n = "backbone." + n[len("model."):]
        if n.endswith((".experts.up_proj", ".experts.down_proj")):
            prefix, proj = n.rsplit(".", 1)
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.{proj}.weight"] = t[e]
        else:
            out[n] = t
    return out


def hf_gradients(model):
    """HF's gradients under the checkpoint's names (checkpoint_tensors)."""
    return checkpoint_tensors({n: p.grad if p.grad is not None else torch.zeros_like(p)
                               for n, p in model.named_parameters()})


def assert_forward_matches_hf(ours, model, ids):
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    logits_diff = (ours["logits"] - out.logits.detach()).abs().max().item()
    assert logits_diff <= 1e-4, f"logits max abs diff {logits_diff}"
    loss_rel = abs(ours["loss"].item() - out.loss.item()) / abs(out.loss.item())
    assert loss_rel <= 1e-5, f"loss {ours['loss'].item()} vs HF {out.loss.item()}"
    theirs = hf_gradients(model)
    ours_grads = {k[len("grad."):]: v for k, v in ours.items() if k.startswith("grad.")}
    assert set(ours_grads) == set(theirs), set(ours_grads) ^ set(theirs)
    worst = max((rel(ours_grads[k], theirs[k]), k) for k in theirs if theirs[k].norm() > 0)
    assert worst[0] <= 1e-4, f"gradient of {worst[1]} differs by {worst[0]:.2e} (relative)"
    for k, g in theirs.items():
        if g.norm() == 0:
            assert ours_grads[k].abs().max().item() == 0, k
    # Every Mamba2 parameter took a gradient (the comparison above covered something).
    for k in ("A_log", "D", "dt_bias", "conv1d.weight", "in_proj.weight", "mixer.norm.weight"):
        assert any(n.endswith(k) and theirs[n].norm() > 0 for n in theirs), k


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_gradients_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    ids = ids_for(model.config, batch=2, seq=19)
    assert_forward_matches_hf(ftd_forward(ftd_train, tmp_path, d, ids), model, ids)


@pytest.mark.parametrize("name", ["g1_chunk8_dense_experts", "g4_chunk4_latent_top1"])
def test_packed_rows_match_hf_on_each_document(tmp_path, ftd_train, name):
    """Two packed rows (documents of 7, 12 and 14 tokens; 20 and 13) through `forward --segments`
    against HF run on each document alone: each document's logits, the mean loss over all of
    them, and every gradient. The boundaries fall inside the Mamba2 chunks and the conv's reach."""
    model, d = make_model(tmp_path, name)
    rows = [[7, 12, 14], [20, 13]]
    ids = ids_for(model.config, batch=2, seq=33, seed=4)
    seg = torch.tensor([[i for i, n in enumerate(r) for _ in range(n)] for r in rows])
    (tmp_path / "seg.json").write_text(json.dumps(seg.tolist()))
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--input", tmp_path / "ids.json", "--segments", tmp_path / "seg.json",
         "--out", tmp_path / "out.safetensors", "--grads"])
    ours = load_file(tmp_path / "out.safetensors")
    model.train()
    total, count, logits_diff = 0.0, 0, 0.0
    for b, r in enumerate(rows):
        start = 0
        for n in r:
            doc = ids[b:b + 1, start:start + n]
            out = model(input_ids=doc, labels=doc)
            total = total + out.loss * (n - 1)
            count += n - 1
            logits_diff = max(logits_diff, (ours["logits"][b:b + 1, start:start + n] - out.logits.detach()).abs().max())
            start += n
    loss = total / count
    loss.backward()
    assert logits_diff <= 1e-4, f"logits max abs diff {logits_diff}"
    assert abs(ours["loss"].item() - loss.item()) / loss.item() <= 1e-5, (ours["loss"].item(), loss.item())
    theirs = hf_gradients(model)
    ours_grads = {k[len("grad."):]: v for k, v in ours.items() if k.startswith("grad.")}
    assert set(ours_grads) == set(theirs)
    worst = max((rel(ours_grads[k], theirs[k]), k) for k in theirs if theirs[k].norm() > 0)
    assert worst[0] <= 1e-4, f"gradient of {worst[1]} differs by {worst[0]:.2e} (relative)"


def test_the_clamp_and_the_correction_bias_matter(tmp_path, ftd_train):
    """The second config's time_step_limit clamps dt and its correction bias moves the expert
    choice: the parity above would not notice an engine that ignored them only if they had no
    effect."""
    model, _ = make_model(tmp_path, "g2_chunk19_latent_grouped")
    ids = ids_for(model.config, batch=1, seq=19)
    with torch.no_grad():
        base = model(input_ids=ids, use_cache=False).logits
        for layer in model.model.layers:
            if layer.block_type == "linear_attention":
                layer.mixer.time_step_limit = (0.0, float("inf"))
        assert (model(input_ids=ids, use_cache=False).logits - base).abs().max() > 1e-3
        model, _ = make_model(tmp_path, "g2_chunk19_latent_grouped")
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.mul_(20)
        assert (model(input_ids=ids, use_cache=False).logits - base).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_adamw_steps_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    assert_adamw_steps_match_hf(ftd_train, tmp_path, model, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoint_round_trip_through_transformers(tmp_path, ftd_train, dtype):
    """Every tensor comes back bit-identical under its backbone.* / per-expert name; what the
    engine saves loads in transformers with the same state and logits; resaving is byte-identical."""
    model, src = make_model(tmp_path, "g2_chunk19_latent_grouped", seed=3, dtype=dtype)
    saved, _, reloaded, reference, _ = assert_checkpoint_round_trip(ftd_train, tmp_path, src, NemotronHForCausalLM,
                                                                    dtype, use_cache=False)
    assert "backbone.layers.0.mixer.experts.7.up_proj.weight" in saved
    assert "backbone.layers.1.mixer.conv1d.weight" in saved
    for field in ("layers_block_type", "n_groups", "chunk_size", "moe_latent_size", "time_step_limit",
                  "n_group", "topk_group", "routed_scaling_factor", "conv_kernel", "use_conv_bias"):
        assert getattr(reloaded.config, field) == getattr(reference.config, field), field

def test_tiny_preset_loads_in_transformers(tmp_path, ftd_train):
    d = tmp_path / "tiny-nemotron-h"
    run([ftd_train, "init-model", "--preset", "tiny-nemotron-h", "--dtype", "fp32", "--seed", "5", "--out", d])
    model = NemotronHForCausalLM.from_pretrained(d, dtype=torch.float32)
    assert model.config.layers_block_type == ["linear_attention", "moe", "full_attention", "moe", "mlp",
                                              "linear_attention"]
    ids = ids_for(model.config, batch=1, seq=21)  # chunk 16 does not divide 21
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--input", tmp_path / "ids.json", "--out", tmp_path / "out.safetensors"])
    ours = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        theirs = model(input_ids=ids, use_cache=False).logits
    assert (ours["logits"] - theirs).abs().max().item() <= 1e-4
    # HF's Mamba2 initialisation: A_log = log(1..nh), dt in [time_step_min, time_step_max].
    mixer = model.model.layers[0].mixer
    assert torch.allclose(mixer.A_log, torch.log(torch.arange(1, 9, dtype=torch.float32)))
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize("layers", [3, 6, 52])
def test_nano3_preset_counts_as_transformers(tmp_path, ftd_train, layers):
    d = tmp_path / "nano3"
    run([ftd_train, "init-model", "--preset", "nemotron-nano-3-30b-a3b", "--layers", str(layers), "--config-only",
         "--out", d])
    info = json.loads(run([ftd_train, "inspect", d, "--json"]).stdout)
    cfg = NemotronHConfig.from_pretrained(d)
    pattern = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"[:layers]
    assert info["model_type"] == "nemotron_h" and info["layers"] == layers
    assert cfg.hybrid_override_pattern == pattern
    assert (cfg.hidden_size, cfg.mamba_num_heads, cfg.n_groups, cfg.n_routed_experts) == (2688, 64, 8, 128)
    with torch.device("meta"):
        model = NemotronHForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert info["parameters_total"] == total, (info["parameters_total"], total)


def _error_of(ftd_train, tmp_path, d):
    (tmp_path / "ids.json").write_text(json.dumps([[1, 2, 3]]))
    return subprocess.run([str(ftd_train), "forward", "--model", str(d), "--input", str(tmp_path / "ids.json"),
                           "--out", str(tmp_path / "out.safetensors")], capture_output=True, text=True)


@pytest.mark.parametrize("fields,named", [
    ({"mlp_hidden_act": "silu"}, "mlp_hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"use_bias": True}, "use_bias"),
    ({"layers_block_type": ["mamba", "cross_attention"]}, "layers_block_type"),
    ({"num_hidden_layers": 4}, "num_hidden_layers"),
    ({"n_groups": 3}, "n_groups"),
    ({"n_group": 3}, "n_group"),
    ({"time_step_limit": [0.5, 0.1]}, "time_step_limit"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
])
def test_unimplemented_or_bad_settings_are_refused(tmp_path, ftd_train, fields, named):
    _, d = make_model(tmp_path, "g1_chunk8_dense_experts")
    config = json.loads((d / "config.json").read_text())
    config.update(fields)
    (d / "config.json").write_text(json.dumps(config))
    res = _error_of(ftd_train, tmp_path, d)
    assert res.returncode == 2, res.stderr
    assert named in res.stderr and "config.json" in res.stderr, res.stderr


def test_mtp_layers_are_carried(tmp_path, ftd_train):
    """A checkpoint with MTP layers (mtp.*, as Nemotron Super's) keeps them bit-identical through a
    resave, with num_nextn_predict_layers and mtp_layers_block_type; transformers still loads it."""
    from safetensors.torch import save_file
    model, src = make_model(tmp_path, "g1_chunk8_dense_experts")
    state = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(2)
    mtp = {"mtp.layers.0.norm.weight": torch.randn(48, generator=g),
           "mtp.layers.0.mixer.q_proj.weight": torch.randn(48, 48, generator=g),
           "mtp.layers.1.mixer.experts.0.up_proj.weight": torch.randn(24, 48, generator=g).to(torch.bfloat16)}
    save_file({**state, **mtp}, src / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.update(num_nextn_predict_layers=1, mtp_layers_block_type=["full_attention", "moe"])
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    run([ftd_train, "resave", "--model", src, "--out", out])
    saved = load_file(out / "model.safetensors")
    for k, v in mtp.items():
        assert saved[k].dtype == v.dtype and torch.equal(saved[k], v), k
    written = json.loads((out / "config.json").read_text())
    assert written["num_nextn_predict_layers"] == 1
    assert written["mtp_layers_block_type"] == ["full_attention", "moe"]
    reloaded = NemotronHForCausalLM.from_pretrained(out, dtype=torch.float32)
    reference = NemotronHForCausalLM.from_pretrained(src, dtype=torch.float32)  # mtp.* ignored by both
    ids = ids_for(model.config, seq=9)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, use_cache=False).logits,
                           reference(input_ids=ids, use_cache=False).logits)


def test_forward_refuses_segments_that_are_not_runs(tmp_path, ftd_train):
    _, d = make_model(tmp_path, "g1_chunk8_dense_experts")
    (tmp_path / "ids.json").write_text(json.dumps([[1, 2, 3, 4]]))
    (tmp_path / "seg.json").write_text(json.dumps([[0, 1, 0, 1]]))
    res = subprocess.run([str(ftd_train), "forward", "--model", str(d), "--input", str(tmp_path / "ids.json"),
                          "--segments", str(tmp_path / "seg.json"), "--out", str(tmp_path / "o.safetensors")],
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert "seg.json" in res.stderr and "must not decrease" in res.stderr, res.stderr
