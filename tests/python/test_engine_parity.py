"""The engine against HF Transformers on the same tiny Qwen3-MoE checkpoints (CPU, fp32):
logits, loss, every gradient, and the losses of AdamW training steps."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import run
from hf_parity import (assert_adamw_steps_match_hf, assert_checkpoint_round_trip, assert_forward_matches_hf, ftd_forward, ids_for, parse_losses,
                       write_dataset, write_spec)

transformers = pytest.importorskip("transformers")
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402

# Each config exercises a different corner: top-k, renormalisation, tying, dense/sparse mix,
# GQA ratio, expert counts that are not powers of two, the aux loss.
CONFIGS = {
    "top1_gqa4_dense_mix": dict(num_experts=5, num_experts_per_tok=1, norm_topk_prob=False, num_attention_heads=8,
                                num_key_value_heads=2, mlp_only_layers=[1], tie_word_embeddings=False),
    "top2_tied_sparse_step2": dict(num_experts=6, num_experts_per_tok=2, norm_topk_prob=True, num_attention_heads=4,
                                   num_key_value_heads=2, decoder_sparse_step=2, tie_word_embeddings=True),
    "top8_mha_aux": dict(num_experts=12, num_experts_per_tok=8, norm_topk_prob=True, num_attention_heads=4,
                         num_key_value_heads=4, output_router_logits=True, router_aux_loss_coef=0.02),
    "top2_no_norm_gqa3_linear_rope": dict(num_experts=7, num_experts_per_tok=2, norm_topk_prob=False,
                                          num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=2,
                                          rope_parameters={"rope_type": "linear", "rope_theta": 5000.0,
                                                           "factor": 2.0}),
}
BASE = dict(vocab_size=211, hidden_size=48, intermediate_size=40, moe_intermediate_size=24, num_hidden_layers=3,
            head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-6)


def make_model(tmp_path, name, seed=0):
    cfg = Qwen3MoeConfig(**{**BASE, **CONFIGS[name]})
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(cfg).float()
    # HF initialises norms to 1; randomise them so that a mix-up of norms would show.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    d = tmp_path / name
    model.save_pretrained(d)
    return model, d


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_gradients_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    ids = ids_for(model.config)
    assert_forward_matches_hf(ftd_forward(ftd_train, tmp_path, d, ids), model, ids)


@pytest.mark.parametrize("name", ["top1_gqa4_dense_mix", "top2_tied_sparse_step2", "top8_mha_aux"])
def test_adamw_steps_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    assert_adamw_steps_match_hf(ftd_train, tmp_path, model, d)


def test_checkpoint_round_trip_through_transformers(tmp_path, ftd_train):
    for dtype in (torch.float32, torch.bfloat16):
        cfg = Qwen3MoeConfig(**{**BASE, **CONFIGS["top2_tied_sparse_step2"]})
        torch.manual_seed(3)
        model = Qwen3MoeForCausalLM(cfg).to(dtype)
        src = tmp_path / f"src_{dtype}"
        model.save_pretrained(src)
        work = tmp_path / f"round_trip_{dtype}".replace("torch.", "")
        work.mkdir()
        assert_checkpoint_round_trip(ftd_train, work, src, Qwen3MoeForCausalLM, dtype)

def test_resume_equals_uninterrupted(tmp_path, ftd_train):
    model, d = make_model(tmp_path, "top2_tied_sparse_step2")
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, model.config.vocab_size, (6, 21), generator=g)
    write_dataset(tmp_path / "data.jsonl", ids)
    hp = dict(max_steps=10, global_batch=2, micro_batch=1, warmup_steps=3)
    write_spec(tmp_path / "full.json", d, tmp_path / "data.jsonl", tmp_path / "full", **hp)
    full = parse_losses(run([ftd_train, "train", "--spec", tmp_path / "full.json"]).stdout)
    write_spec(tmp_path / "split.json", d, tmp_path / "data.jsonl", tmp_path / "split", **hp)
    first = parse_losses(run([ftd_train, "train", "--spec", tmp_path / "split.json", "--stop-after", "5"]).stdout)
    second = run([ftd_train, "train", "--spec", tmp_path / "split.json", "--resume"])
    assert "resumed from" in second.stdout
    rest = parse_losses(second.stdout)
    assert len(full) == 10 and len(first) == 5 and len(rest) == 5, (full, first, rest)
    assert first + rest == full  # the printed losses are identical, not merely close
    final_full = load_file(tmp_path / "full" / "checkpoint-10" / "model.safetensors")
    final_split = load_file(tmp_path / "split" / "checkpoint-10" / "model.safetensors")
    for k in final_full:
        assert torch.equal(final_full[k], final_split[k]), k
