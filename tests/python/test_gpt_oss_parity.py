"""The engine against HF Transformers' GptOssForCausalLM on tiny checkpoints (CPU, fp32): logits,
loss, every gradient (attention sinks, q/k/v/o biases, the router's bias, the experts' interleaved
gate_up and biases), 5 AdamW steps; checkpoints (fused expert keys) loaded and saved
byte-identically and loadable by transformers; presets counted as transformers counts them;
settings the engine does not implement refused with an error naming the field."""
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import run
from hf_parity import (assert_adamw_steps_match_hf, assert_checkpoint_round_trip, assert_forward_matches_hf, ftd_forward, ids_for, write_dataset,
                       write_spec)

transformers = pytest.importorskip("transformers")
from transformers import GptOssConfig, GptOssForCausalLM  # noqa: E402

BASE = dict(vocab_size=203, hidden_size=48, num_hidden_layers=3, max_position_embeddings=512,
            attn_implementation="eager")
# Each config exercises a different corner; every one has sliding windows shorter than the
# sequences (19 and 33 tokens) on the sliding_attention layers (HF's default: layers 0 and 2).
CONFIGS = {
    # GQA 2:1, top-2 of 4, the default YaRN rope (factor 32, truncate false), window 4, a clamp
    # that bites (swiglu_limit 0.05 below the gate/up values' spread).
    "gqa2_top2_e4_window4_clamped": dict(intermediate_size=24, num_local_experts=4, num_experts_per_tok=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                         sliding_window=4, swiglu_limit=0.05),
    # MHA, top-1 of 32, tied embeddings, explicit layer types, the load-balancing loss, plain rope.
    "mha_top1_e32_tied_aux": dict(intermediate_size=16, num_local_experts=32, num_experts_per_tok=1,
                                  num_attention_heads=4, num_key_value_heads=4, head_dim=16, sliding_window=6,
                                  tie_word_embeddings=True, output_router_logits=True, router_aux_loss_coef=0.02,
                                  layer_types=["full_attention", "sliding_attention", "sliding_attention"],
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # GQA 4:1, top-4 of 8, window 3, swiglu_alpha changed, no attention biases.
    "gqa4_top4_e8_window3_nobias": dict(intermediate_size=20, num_local_experts=8, num_experts_per_tok=4,
                                        num_attention_heads=8, num_key_value_heads=2, head_dim=8, sliding_window=3,
                                        swiglu_alpha=1.3, attention_bias=False),
}
NAMES = dict(fused=True)


def make_model(tmp_path, name, seed=0, dtype=torch.float32):
    cfg = GptOssConfig(**{**BASE, **CONFIGS[name]})
    torch.manual_seed(seed)
    model = GptOssForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        # Norms at 1 and biases at 0 would hide a mix-up: randomise them; the experts' values
        # larger so that the clamp and the (up + 1) term matter.
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias") or n.endswith("sinks"):
                p.copy_(0.3 * torch.randn_like(p))
            elif ".experts." in n:
                p.normal_(0, 0.2)
    d = tmp_path / f"gpt_oss_{name}"
    model.save_pretrained(d)
    return model, d


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_gradients_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    ids = ids_for(model.config, batch=2, seq=19)
    assert_forward_matches_hf(ftd_forward(ftd_train, tmp_path, d, ids), model, ids, **NAMES)


def test_clamp_and_sinks_matter(tmp_path, ftd_train):
    """The first config's clamp changes the experts' output, and the sinks change attention: the
    parity above would not notice an engine that ignored them only if they had no effect."""
    model, _ = make_model(tmp_path, "gqa2_top2_e4_window4_clamped")
    ids = ids_for(model.config, batch=1, seq=19)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        for m in model.modules():
            if hasattr(m, "limit"):
                m.limit = 1e9
        assert (model(input_ids=ids).logits - base).abs().max() > 1e-3
        for layer in model.model.layers:
            layer.self_attn.sinks.fill_(-1e4)
            layer.mlp.experts.limit = 0.05
        assert (model(input_ids=ids).logits - base).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_adamw_steps_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    assert_adamw_steps_match_hf(ftd_train, tmp_path, model, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoint_round_trip_through_transformers(tmp_path, ftd_train, dtype):
    """Fused, interleaved expert tensors come back bit-identical; what the engine saves loads in
    transformers with the same state and logits, and resaving it is byte-identical."""
    model, src = make_model(tmp_path, "gqa2_top2_e4_window4_clamped", seed=3, dtype=dtype)
    saved, _, reloaded, reference, _ = assert_checkpoint_round_trip(ftd_train, tmp_path, src, GptOssForCausalLM, dtype)
    assert "model.layers.0.mlp.experts.gate_up_proj" in saved
    assert reloaded.config.layer_types == reference.config.layer_types
    assert reloaded.config.sliding_window == reference.config.sliding_window
    assert reloaded.config.swiglu_limit == reference.config.swiglu_limit
    assert reloaded.config.rope_parameters == reference.config.rope_parameters

def test_tiny_preset_loads_in_transformers(tmp_path, ftd_train):
    d = tmp_path / "tiny-gpt-oss"
    run([ftd_train, "init-model", "--preset", "tiny-gpt-oss", "--dtype", "fp32", "--seed", "5", "--out", d])
    model = GptOssForCausalLM.from_pretrained(d, dtype=torch.float32)
    ids = ids_for(model.config, batch=1, seq=12)  # window 8 < 12
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--input", tmp_path / "ids.json", "--out", tmp_path / "out.safetensors"])
    ours = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    assert (ours["logits"] - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("preset,layers", [("gpt-oss-20b", 2), ("gpt-oss-120b", 3), ("gpt-oss-20b", 24)])
def test_full_presets_count_as_transformers(tmp_path, ftd_train, preset, layers):
    d = tmp_path / preset
    run([ftd_train, "init-model", "--preset", preset, "--layers", str(layers), "--config-only", "--out", d])
    info = json.loads(run([ftd_train, "inspect", d, "--json"]).stdout)
    cfg = GptOssConfig.from_pretrained(d)
    assert info["model_type"] == "gpt_oss" and info["layers"] == layers
    # HF's default pattern: sliding where l + 1 is odd.
    assert cfg.layer_types == ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
    assert cfg.sliding_window == 128 and cfg.swiglu_limit == 7.0
    with torch.device("meta"):
        model = GptOssForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert info["parameters_total"] == total, (info["parameters_total"], total)


def _error_of(ftd_train, tmp_path, d):
    (tmp_path / "ids.json").write_text(json.dumps([[1, 2, 3]]))
    return subprocess.run([str(ftd_train), "forward", "--model", str(d), "--input", str(tmp_path / "ids.json"),
                           "--out", str(tmp_path / "out.safetensors")], capture_output=True, text=True)


@pytest.mark.parametrize("fields,named", [
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"layer_types": ["full_attention"]}, "layer_types"),
    ({"layer_types": ["sliding_attention", "chunked_attention", "full_attention"]}, "layer_types"),
    ({"swiglu_limit": 0}, "swiglu_limit"),
    ({"sliding_window": None}, "sliding_window"),
])
def test_unimplemented_settings_are_refused(tmp_path, ftd_train, fields, named):
    _, d = make_model(tmp_path, "gqa2_top2_e4_window4_clamped")
    config = json.loads((d / "config.json").read_text())
    config.update(fields)
    (d / "config.json").write_text(json.dumps(config))
    res = _error_of(ftd_train, tmp_path, d)
    assert res.returncode == 2, res.stderr
    assert named in res.stderr and "config.json" in res.stderr, res.stderr


def test_lora_targets_gpt_oss_lacks_are_refused_naming_the_field(tmp_path, ftd_train):
    """GPT-OSS has no dense MLP and no shared experts: LoRA targets naming them are refused up
    front, naming lora.targets (its attention and experts are adapted: test_gpt_oss_lora.py)."""
    model, d = make_model(tmp_path, "gqa4_top4_e8_window3_nobias")
    write_dataset(tmp_path / "data.jsonl", ids_for(model.config, batch=2, seq=17))
    write_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out")
    spec = json.loads((tmp_path / "job.json").read_text())
    spec["method"] = "lora"
    for targets, named in ((["experts", "mlp"], "lora.targets: mlp matches nothing in this gpt_oss model"),
                           (["shared_experts"], "lora.targets: shared_experts matches nothing in this gpt_oss")):
        spec["lora"] = {"rank": 4, "alpha": 8, "targets": targets}
        (tmp_path / "job.json").write_text(json.dumps(spec))
        res = subprocess.run([str(ftd_train), "train", "--spec", str(tmp_path / "job.json")], capture_output=True,
                             text=True)
        assert res.returncode != 0 and named in res.stderr, res.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("checkpoint-*"))


def test_mxfp4_experts_dequantise_as_transformers(tmp_path, ftd_train):
    """A hub-style checkpoint (experts as MXFP4 _blocks/_scales, quantization_config mxfp4) loads
    with every expert weight equal to transformers' dequantisation (convert_moe_packed_tensors),
    bit for bit in bf16; the resaved checkpoint is plain bf16 and loads in transformers."""
    from safetensors.torch import save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    # Widths multiples of 32 (one MXFP4 scale per 32 values).
    cfg = GptOssConfig(**{**BASE, "hidden_size": 64, "intermediate_size": 32, "num_local_experts": 4,
                          "num_experts_per_tok": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                          "head_dim": 16, "sliding_window": 4})
    torch.manual_seed(0)
    GptOssForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "plain")
    state = load_file(tmp_path / "plain" / "model.safetensors")
    g = torch.Generator().manual_seed(5)
    expected = {}
    for k in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        E, K, N = state.pop(k).shape
        blocks = torch.randint(0, 256, (E, N, K // 32, 16), generator=g, dtype=torch.uint8)
        scales = torch.randint(117, 133, (E, N, K // 32), generator=g, dtype=torch.uint8)
        state[k + "_blocks"], state[k + "_scales"] = blocks, scales
        expected[k] = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
        assert expected[k].shape == (E, K, N)
    mx = tmp_path / "mxfp4"
    mx.mkdir()
    save_file(state, mx / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4",
                                     "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                                "model.embed_tokens", "lm_head"]}
    (mx / "config.json").write_text(json.dumps(config))

    out = tmp_path / "out"
    run([ftd_train, "resave", "--model", mx, "--out", out])
    saved = load_file(out / "model.safetensors")
    assert not any(k.endswith(("_blocks", "_scales")) for k in saved)
    for k, want in expected.items():
        assert saved[k].dtype == torch.bfloat16 and torch.equal(saved[k], want), k
    for k, v in state.items():
        if not k.endswith(("_blocks", "_scales")):
            assert torch.equal(saved[k], v), k
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reloaded = GptOssForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert torch.equal(reloaded.model.layers[1].mlp.experts.down_proj.detach(),
                       expected["model.layers.1.mlp.experts.down_proj"])

    config["quantization_config"] = {"quant_method": "fp8"}
    (mx / "config.json").write_text(json.dumps(config))
    res = _error_of(ftd_train, tmp_path, mx)
    assert res.returncode == 2 and "quantization_config" in res.stderr, res.stderr
