"""The engine against HF Transformers' DeepseekV3ForCausalLM on tiny checkpoints (CPU, fp32):
logits, loss, every gradient, 5 AdamW steps; checkpoints loaded and saved byte-identically
(MTP layers carried through untouched) and loadable by transformers."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run
from hf_parity import (assert_adamw_steps_match_hf, assert_checkpoint_round_trip, assert_forward_matches_hf, ftd_forward, ids_for)

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
# Each config exercises a different corner of the family.
CONFIGS = {
    # q_lora_rank, 4 groups of which 2 are candidates, one shared expert, a dense first layer, YaRN
    # with mscale (softmax scale too), interleaved rope.
    "qlora_groups4of2_shared1_dense1_yarn": dict(
        q_lora_rank=24, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1,
        first_k_dense_replace=1, rope_parameters=YARN, rope_interleave=True, routed_scaling_factor=2.5),
    # Moonlight's layout: no q_lora_rank, one group, two shared experts, rms_norm_eps 1e-5.
    "moonlight_like_no_qlora_shared2": dict(
        q_lora_rank=None, n_routed_experts=6, num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=2,
        first_k_dense_replace=1, rms_norm_eps=1e-5, routed_scaling_factor=2.446,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
    # No shared experts, every layer sparse, 2 groups of which 1, no renormalisation, rotate-half
    # rope, attention biases, tied embeddings.
    "groups2of1_shared0_no_dense_bias_tied": dict(
        q_lora_rank=16, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=0,
        first_k_dense_replace=0, norm_topk_prob=False, rope_interleave=False, attention_bias=True,
        tie_word_embeddings=True, routed_scaling_factor=1.0),
    # Two dense layers before the sparse one, top-1 (not renormalised: a renormalised top-1 weight
    # is 1 and the router gets no gradient), YaRN without mscale (attention factor from the
    # factor alone), v_head_dim != qk_nope_head_dim.
    "dense2_top1_yarn_plain_vdim": dict(
        q_lora_rank=20, n_routed_experts=5, num_experts_per_tok=1, n_group=1, topk_group=1, n_shared_experts=1,
        norm_topk_prob=False,
        first_k_dense_replace=2, v_head_dim=12, qk_nope_head_dim=8,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                         "original_max_position_embeddings": 256}),
}
BASE = dict(vocab_size=199, hidden_size=48, intermediate_size=56, moe_intermediate_size=20, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=12, qk_rope_head_dim=8,
            v_head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6, num_nextn_predict_layers=0,
            tie_word_embeddings=False)


def make_model(tmp_path, name, seed=0, dtype=torch.float32):
    cfg = DeepseekV3Config(**{**BASE, **CONFIGS[name]})
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        # HF initialises norms to 1 and the selection bias to 0: randomise both so that a mix-up
        # (or a bias leaking into the weights) would show. The bias is of the sigmoid scores'
        # scale, so it changes choices.
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            if n.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    d = tmp_path / name
    model.save_pretrained(d)
    return model, d


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_gradients_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    ids = ids_for(model.config, batch=2, seq=19)
    assert_forward_matches_hf(ftd_forward(ftd_train, tmp_path, d, ids), model, ids)


@pytest.mark.parametrize("name", ["qlora_groups4of2_shared1_dense1_yarn", "moonlight_like_no_qlora_shared2",
                                  "groups2of1_shared0_no_dense_bias_tied"])
def test_adamw_steps_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    assert_adamw_steps_match_hf(ftd_train, tmp_path, model, d, micro_batch=1)
    # The selection bias is not trained by gradient (and the bias update is off by default).
    final = load_file(tmp_path / "out" / "checkpoint-5" / "model.safetensors")
    for n, b in model.named_buffers():
        if n.endswith("e_score_correction_bias"):
            assert torch.equal(final[n], b), n


def add_mtp_layer(d, cfg):
    """An MTP layer as DeepSeek-V3 checkpoints store it (layer index num_hidden_layers, in bf16
    beside fp32 weights), added to an HF-saved checkpoint."""
    L = cfg.num_hidden_layers
    g = torch.Generator().manual_seed(4)
    extra = {
        f"model.layers.{L}.eh_proj.weight": torch.randn(cfg.hidden_size, 2 * cfg.hidden_size, generator=g),
        f"model.layers.{L}.enorm.weight": torch.randn(cfg.hidden_size, generator=g),
        f"model.layers.{L}.self_attn.kv_a_layernorm.weight": torch.randn(cfg.kv_lora_rank, generator=g),
        f"model.layers.{L}.mlp.experts.0.gate_proj.weight": torch.randn(cfg.moe_intermediate_size, cfg.hidden_size,
                                                                        generator=g),
    }
    extra = {k: v.to(torch.bfloat16) for k, v in extra.items()}
    tensors = load_file(d / "model.safetensors")
    tensors.update(extra)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((d / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    (d / "config.json").write_text(json.dumps(config))
    return extra


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoint_round_trip_through_transformers(tmp_path, ftd_train, dtype):
    model, src = make_model(tmp_path, "qlora_groups4of2_shared1_dense1_yarn", seed=3, dtype=dtype)
    mtp = add_mtp_layer(src, model.config)
    # transformers loads it (the MTP layer is an unused extra) with the same state and logits.
    # (HF's bf16 CPU grouped_mm needs 16-byte strides; this model's F is 20: logits in fp32 only.)
    saved, _, reloaded, _, a = assert_checkpoint_round_trip(ftd_train, tmp_path, src, DeepseekV3ForCausalLM, dtype,
                                                            logits=dtype == torch.float32)
    for k in mtp:  # carried as stored (bf16), not converted
        assert saved[k].dtype == torch.bfloat16, k
    assert json.loads((a / "config.json").read_text())["num_nextn_predict_layers"] == 1
    assert reloaded.config.n_group == 4 and reloaded.config.first_k_dense_replace == 1

def test_init_model_presets_load_in_transformers(tmp_path, ftd_train):
    """A preset checkpoint (every feature of the family on) is a valid HF DeepSeek-V3 model whose
    logits match the engine's."""
    d = tmp_path / "tiny"
    run([ftd_train, "init-model", "--preset", "tiny-deepseek-v3", "--dtype", "fp32", "--seed", "5", "--out", d])
    model = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32)
    assert model.config.q_lora_rank == 48 and model.config.n_shared_experts == 2
    ids = ids_for(model.config, batch=1, seq=12)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--input", tmp_path / "ids.json", "--out", tmp_path / "out.safetensors"])
    ours = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    assert (ours["logits"] - theirs).abs().max().item() <= 1e-4
