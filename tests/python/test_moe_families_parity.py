"""The engine against HF Transformers' Mixtral, Qwen2-MoE and OLMoE on tiny checkpoints (CPU,
fp32): logits, loss, every gradient, 5 AdamW steps; checkpoints loaded and saved byte-identically
and loadable by transformers; presets that transformers loads; settings the engine does not
implement refused with an error naming the field."""
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import run
from hf_parity import (assert_adamw_steps_match_hf, assert_checkpoint_round_trip, assert_forward_matches_hf, ftd_forward, ids_for)

transformers = pytest.importorskip("transformers")
from transformers import (MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM,  # noqa: E402
                          Qwen2MoeConfig, Qwen2MoeForCausalLM)

BASE = dict(vocab_size=203, hidden_size=48, num_hidden_layers=3, max_position_embeddings=512)
# family -> (config class, model class, the checkpoint's MoE module, its per-expert projection
# names for gate/up/down, configs). Each config exercises a different corner of its family.
FAMILIES = {
    "mixtral": (MixtralConfig, MixtralForCausalLM, "block_sparse_moe", ("w1", "w3", "w2"), {
        # GQA 2:1, top-2 of 6 (renormalised, as Mixtral always is), rms_norm_eps 1e-5.
        "gqa_top2": dict(intermediate_size=40, num_local_experts=6, num_experts_per_tok=2, num_attention_heads=4,
                         num_key_value_heads=2, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        # MHA, top-3 of 8, head_dim not hidden/heads, tied embeddings, the load-balancing loss.
        "mha_top3_headdim_tied_aux": dict(
            intermediate_size=24, num_local_experts=8, num_experts_per_tok=3, num_attention_heads=4,
            num_key_value_heads=4, head_dim=16, tie_word_embeddings=True, output_router_logits=True,
            router_aux_loss_coef=0.02),
        # A sliding window shorter than the sequences (19 and 33 tokens): every layer attends to
        # itself and the 4 tokens before.
        "sliding_window5": dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, num_attention_heads=4,
                                num_key_value_heads=2, sliding_window=5),
    }),
    "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM, "mlp", ("gate_proj", "up_proj", "down_proj"), {
        # qkv biases, a dense layer between sparse ones, renormalised top-2, GQA.
        "dense_mix_norm_gqa": dict(
            intermediate_size=56, moe_intermediate_size=20, shared_expert_intermediate_size=36, num_experts=6,
            num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1], num_attention_heads=4,
            num_key_value_heads=2),
        # Every other layer sparse, top-4 of 7 not renormalised (Qwen1.5-MoE's routing), tied.
        "sparse_step2_top4_tied": dict(
            intermediate_size=40, moe_intermediate_size=16, shared_expert_intermediate_size=64, num_experts=7,
            num_experts_per_tok=4, norm_topk_prob=False, decoder_sparse_step=2, num_attention_heads=6,
            num_key_value_heads=6, tie_word_embeddings=True),
        # No qkv biases, the load-balancing loss.
        "no_qkv_bias_aux": dict(
            intermediate_size=40, moe_intermediate_size=24, shared_expert_intermediate_size=24, num_experts=5,
            num_experts_per_tok=2, qkv_bias=False, num_attention_heads=4, num_key_value_heads=1,
            output_router_logits=True, router_aux_loss_coef=0.01),
        # Sliding-window layers as HF derives them: layer 0 (l + 1 odd, below max_window_layers 2)
        # has a window of 6, layers 1 and 2 attend fully.
        "sliding_window_layers": dict(
            intermediate_size=40, moe_intermediate_size=16, shared_expert_intermediate_size=24, num_experts=4,
            num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
            sliding_window=6, max_window_layers=2),
    }),
    "olmoe": (OlmoeConfig, OlmoeForCausalLM, "mlp", ("gate_proj", "up_proj", "down_proj"), {
        # clip_qkv small enough to clip (q and k after their norm, v), top-3 of 8 not
        # renormalised (OLMoE's routing), GQA (k_norm over kv_dim).
        "clip_gqa_top3": dict(intermediate_size=24, num_experts=8, num_experts_per_tok=3, clip_qkv=0.6,
                              num_attention_heads=4, num_key_value_heads=2),
        # Renormalised top-2, attention biases, MHA, the load-balancing loss.
        "norm_topk_bias_aux": dict(intermediate_size=32, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
                                   attention_bias=True, num_attention_heads=4, num_key_value_heads=4,
                                   output_router_logits=True, router_aux_loss_coef=0.01),
    }),
}
CASES = [(f, n) for f, spec in FAMILIES.items() for n in spec[4]]


def make_model(tmp_path, family, name, seed=0, dtype=torch.float32):
    config_cls, model_cls, _, _, configs = FAMILIES[family]
    cfg = config_cls(**{**BASE, **configs[name]})
    torch.manual_seed(seed)
    model = model_cls(cfg).to(dtype)
    with torch.no_grad():
        # HF initialises norms to 1, biases and some routers to 0: randomise them so that a
        # mix-up would show.
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif p.abs().max() == 0:
                p.normal_(0, 0.05)
    d = tmp_path / f"{family}_{name}"
    model.save_pretrained(d)
    return model, d


def hf_names(family):
    """Where the family's HF checkpoint keeps its experts: the MoE module and the expert names."""
    _, _, module, experts, _ = FAMILIES[family]
    return dict(module=module, experts=experts)


@pytest.mark.parametrize("family,name", CASES)
def test_forward_and_gradients_match_hf(tmp_path, ftd_train, family, name):
    model, d = make_model(tmp_path, family, name)
    ids = ids_for(model.config, batch=2, seq=19)
    assert_forward_matches_hf(ftd_forward(ftd_train, tmp_path, d, ids), model, ids, **hf_names(family))


@pytest.mark.parametrize("family,name", CASES)
def test_adamw_steps_match_hf(tmp_path, ftd_train, family, name):
    model, d = make_model(tmp_path, family, name)
    assert_adamw_steps_match_hf(ftd_train, tmp_path, model, d)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoint_round_trip_through_transformers(tmp_path, ftd_train, family, dtype):
    _, model_cls, _, _, configs = FAMILIES[family]
    model, src = make_model(tmp_path, family, sorted(configs)[0], seed=3, dtype=dtype)
    # (HF's bf16 CPU grouped_mm needs 16-byte strides; some widths here are 20: logits in fp32 only.)
    assert_checkpoint_round_trip(ftd_train, tmp_path, src, model_cls, dtype, logits=dtype == torch.float32)

PRESETS = {"tiny-mixtral": MixtralForCausalLM, "tiny-qwen2-moe": Qwen2MoeForCausalLM,
           "tiny-olmoe": OlmoeForCausalLM}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_tiny_presets_load_in_transformers(tmp_path, ftd_train, preset):
    """A tiny preset checkpoint is a valid HF model of its family whose logits match the engine's."""
    d = tmp_path / preset
    run([ftd_train, "init-model", "--preset", preset, "--dtype", "fp32", "--seed", "5", "--out", d])
    model = PRESETS[preset].from_pretrained(d, dtype=torch.float32)
    ids = ids_for(model.config, batch=1, seq=12)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--input", tmp_path / "ids.json", "--out", tmp_path / "out.safetensors"])
    ours = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    assert (ours["logits"] - theirs).abs().max().item() <= 1e-4


# The full-size presets with 1 or 2 layers: their shapes and counts as HF computes them (meta
# device: no weights are allocated), and init-model writes a config transformers reads.
FULL_PRESETS = {"mixtral-8x7b": (MixtralConfig, MixtralForCausalLM),
                "qwen1.5-moe-a2.7b": (Qwen2MoeConfig, Qwen2MoeForCausalLM),
                "qwen2-57b-a14b": (Qwen2MoeConfig, Qwen2MoeForCausalLM),
                "olmoe-1b-7b": (OlmoeConfig, OlmoeForCausalLM)}


@pytest.mark.parametrize("preset", sorted(FULL_PRESETS))
def test_full_presets_count_as_transformers(tmp_path, ftd_train, preset):
    config_cls, model_cls = FULL_PRESETS[preset]
    d = tmp_path / preset
    run([ftd_train, "init-model", "--preset", preset, "--layers", "2", "--config-only", "--out", d])
    info = json.loads(run([ftd_train, "inspect", d, "--json"]).stdout)
    cfg = config_cls.from_pretrained(d)
    assert info["model_type"] == cfg.model_type and info["layers"] == 2
    with torch.device("meta"):
        model = model_cls(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert info["parameters_total"] == total, (info["parameters_total"], total)


REFUSED = [
    ("mixtral", "gqa_top2", {"router_jitter_noise": 0.1}, "router_jitter_noise"),
    ("qwen2_moe", "dense_mix_norm_gqa", {"use_sliding_window": False,
                                         "layer_types": ["sliding_attention", "full_attention", "full_attention"]},
     "use_sliding_window"),
    ("qwen2_moe", "dense_mix_norm_gqa", {"layer_types": ["full_attention"]}, "layer_types"),
    ("olmoe", "clip_gqa_top3", {"head_dim": 8}, "head_dim"),
]


@pytest.mark.parametrize("family,name,fields,named", REFUSED)
def test_unimplemented_settings_are_refused(tmp_path, ftd_train, family, name, fields, named):
    """A setting the engine does not implement is an error naming the field, never ignored."""
    _, d = make_model(tmp_path, family, name)
    config = json.loads((d / "config.json").read_text())
    config.update(fields)
    (d / "config.json").write_text(json.dumps(config))
    (tmp_path / "ids.json").write_text(json.dumps([[1, 2, 3]]))
    res = subprocess.run([str(ftd_train), "forward", "--model", str(d), "--input", str(tmp_path / "ids.json"),
                          "--out", str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert named in res.stderr and "config.json" in res.stderr, res.stderr
