"""The engine against HF Transformers on the same tiny Qwen3-MoE checkpoints (CPU, fp32):
logits, loss, every gradient, and the losses of AdamW training steps."""
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import run

transformers = pytest.importorskip("transformers")
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM  # noqa: E402
from transformers.optimization import get_cosine_schedule_with_warmup  # noqa: E402

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


def ids_for(cfg, batch=2, seq=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_gradients_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    ids = ids_for(model.config)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--input", tmp_path / "ids.json", "--out", tmp_path / "out.safetensors",
         "--grads"])
    ours = load_file(tmp_path / "out.safetensors")

    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    logits_diff = (ours["logits"] - out.logits.detach()).abs().max().item()
    assert logits_diff <= 1e-4, f"logits max abs diff {logits_diff}"
    loss_rel = abs(ours["loss"].item() - out.loss.item()) / abs(out.loss.item())
    assert loss_rel <= 1e-5, f"loss {ours['loss'].item()} vs HF {out.loss.item()}"

    # Every HF parameter's gradient, per-expert keys included.
    hf_grads = {}
    for n, p in model.named_parameters():
        if n.endswith("mlp.experts.gate_up_proj"):  # HF v5 fuses [E, 2F, H] in memory
            layer = n[: -len("gate_up_proj")]
            F = p.shape[1] // 2
            for e in range(p.shape[0]):
                hf_grads[f"{layer}{e}.gate_proj.weight"] = p.grad[e, :F]
                hf_grads[f"{layer}{e}.up_proj.weight"] = p.grad[e, F:]
        elif n.endswith("mlp.experts.down_proj"):
            layer = n[: -len("down_proj")]
            for e in range(p.shape[0]):
                hf_grads[f"{layer}{e}.down_proj.weight"] = p.grad[e]
        else:
            hf_grads[n] = p.grad
    ours_grads = {k[len("grad."):]: v for k, v in ours.items() if k.startswith("grad.")}
    if model.config.tie_word_embeddings:
        hf_grads.pop("lm_head.weight", None)
    assert set(ours_grads) == set(hf_grads)
    worst = max((rel(ours_grads[k], hf_grads[k]), k) for k in hf_grads if hf_grads[k].norm() > 0)
    assert worst[0] <= 1e-4, f"gradient of {worst[1]} differs by {worst[0]:.2e} (relative)"
    for k, g in hf_grads.items():  # experts no token reached: both exactly zero
        if g.norm() == 0:
            assert ours_grads[k].abs().max().item() == 0, k


def write_dataset(path, ids):
    path.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in ids.tolist()))


def write_spec(path, model_dir, data, out, **hp):
    spec = {"base_model": str(model_dir), "datasets": {"train": str(data), "format": "tokens"}, "output": str(out),
            "hyperparameters": {"max_steps": 5, "global_batch": 2, "micro_batch": 1, "seq_len": 64, "lr": 3e-3,
                                "schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, **hp},
            "device": "cpu", "dtype": "fp32", "precision": "fp32_master"}
    path.write_text(json.dumps(spec))


def parse_losses(stdout):
    return [float(m.group(1)) for m in re.finditer(r"^step \d+/\d+ loss ([0-9.eE+-]+)", stdout, re.M)]


def hf_train_losses(model, ids, steps, lr, warmup, wd, clip):
    decay = [p for n, p in model.named_parameters() if "norm" not in n and not n.endswith(".bias")]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n or n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(input_ids=ids, labels=ids)
        losses.append(out.loss.item())
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return losses


@pytest.mark.parametrize("name", ["top1_gqa4_dense_mix", "top2_tied_sparse_step2", "top8_mha_aux"])
def test_adamw_steps_match_hf(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    ids = ids_for(model.config, batch=2, seq=33)
    write_dataset(tmp_path / "data.jsonl", ids)
    # The aux loss is not additive over micro-batches: compare it without accumulation.
    micro = 2 if model.config.output_router_logits else 1
    write_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out", micro_batch=micro)
    res = run([ftd_train, "train", "--spec", tmp_path / "job.json"])
    ours = parse_losses(res.stdout)
    theirs = hf_train_losses(model, ids, 5, 3e-3, 2, 0.1, 0.5)
    assert len(ours) == 5, res.stdout
    diffs = [abs(a - b) for a, b in zip(ours, theirs)]
    assert max(diffs) <= 1e-4, f"ftd {ours}\nHF  {theirs}"
    assert theirs[-1] < theirs[0]  # training did something


def test_checkpoint_round_trip_through_transformers(tmp_path, ftd_train):
    for dtype in (torch.float32, torch.bfloat16):
        cfg = Qwen3MoeConfig(**{**BASE, **CONFIGS["top2_tied_sparse_step2"]})
        torch.manual_seed(3)
        model = Qwen3MoeForCausalLM(cfg).to(dtype)
        src = tmp_path / f"src_{dtype}"
        model.save_pretrained(src)
        a, b = tmp_path / f"a_{dtype}", tmp_path / f"b_{dtype}"
        run([ftd_train, "resave", "--model", src, "--out", a])
        run([ftd_train, "resave", "--model", a, "--out", b])
        original = load_file(src / "model.safetensors")
        saved = load_file(a / "model.safetensors")
        assert sorted(saved) == sorted(original)
        for k in original:
            assert saved[k].shape == original[k].shape and saved[k].dtype == original[k].dtype, k
            assert torch.equal(saved[k], original[k]), k
        # Loading what the engine saved and saving again is byte-identical.
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        assert (a / "config.json").read_text() == (b / "config.json").read_text()
        # Both loaded the same way (a model cast with .to() keeps bf16 rotary buffers).
        reloaded = Qwen3MoeForCausalLM.from_pretrained(a, dtype=dtype)
        reference = Qwen3MoeForCausalLM.from_pretrained(src, dtype=dtype)
        ids = ids_for(cfg, seq=9)
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, reference(input_ids=ids).logits)


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
