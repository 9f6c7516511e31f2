"""LoRA (method lora) against PEFT on transformers v5 (CPU, fp32): a PEFT-wrapped model's adapter,
saved by PEFT, applied by `ftd-train forward --adapter` gives the same logits, loss and adapter
gradients, on Qwen3-MoE, DeepSeek-V3, Mixtral, Qwen2-MoE and OLMoE; ftd's LoRA training equals
PEFT's over AdamW steps; PEFT loads ftd's checkpoints (adapter_config.json +
adapter_model.safetensors) and reproduces ftd's logits; the merged checkpoint is base + B A scale;
resume equals an uninterrupted run; the base stays bit-identical and the optimizer state holds
adapters only."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import run
import test_deepseek_parity as deepseek
import test_engine_parity as qwen3
import test_moe_families_parity as families
from test_engine_parity import ids_for, parse_losses, rel, write_dataset

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

MLA_ATTENTION = ["q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
GQA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make(tmp_path, family, name):
    if family == "qwen3_moe":
        return qwen3.make_model(tmp_path, name)
    if family == "deepseek_v3":
        return deepseek.make_model(tmp_path, name)
    return families.make_model(tmp_path, family, name)


def lora_config(model, targets, r, alpha, rslora=False):
    """The LoraConfig that adapts what ftd's lora.targets name (the same as ftd's exported
    adapter_config.json): attention by module name, experts and dense/shared MLPs by parameter."""
    names = {n for n, _ in model.named_parameters()}
    modules, params = [], []
    if "attention" in targets:
        leaves = {n.split(".")[-2] for n in names if ".self_attn." in n and n.endswith("proj.weight")}
        modules = sorted(leaves & set(MLA_ATTENTION + GQA_ATTENTION))
    for n in sorted(names):
        if not n.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")):
            continue
        shared = ".shared_expert." in n or ".shared_experts." in n
        if (shared and "shared_experts" in targets) or (not shared and ".mlp." in n and "mlp" in targets):
            params.append(n)
    if "experts" in targets:
        params += ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    return LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=modules, target_parameters=params,
                      lora_dropout=0.0)


def peft_model(model, targets, r=4, alpha=8, rslora=False, seed=3):
    pm = get_peft_model(model, lora_config(model, targets, r, alpha, rslora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B is zero at init: give every adapter values so that it matters
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return pm


def peft_grads(pm):
    return {n.replace(".default", ""): p.grad for n, p in pm.named_parameters() if p.requires_grad}


# family, config, targets, rslora
CASES = [
    ("qwen3_moe", "top2_tied_sparse_step2", ("attention", "experts", "mlp"), False),
    ("qwen3_moe", "top1_gqa4_dense_mix", ("attention", "experts"), True),
    ("qwen3_moe", "top8_mha_aux", ("experts",), False),
    ("deepseek_v3", "qlora_groups4of2_shared1_dense1_yarn", ("attention", "experts", "mlp", "shared_experts"), False),
    ("deepseek_v3", "moonlight_like_no_qlora_shared2", ("attention", "experts"), False),
    ("mixtral", "gqa_top2", ("attention", "experts"), False),
    ("qwen2_moe", "dense_mix_norm_gqa", ("attention", "experts", "shared_experts", "mlp"), True),
    ("olmoe", "clip_gqa_top3", ("attention", "experts"), False),
]


@pytest.mark.parametrize("family,name,targets,rslora", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_adapter_logits_and_gradients_match_peft(tmp_path, ftd_train, family, name, targets, rslora):
    model, d = make(tmp_path, family, name)
    pm = peft_model(model, targets, rslora=rslora)
    pm.save_pretrained(tmp_path / "adapter")
    ids = ids_for(model.config)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--adapter", tmp_path / "adapter", "--input", tmp_path / "ids.json",
         "--out", tmp_path / "out.safetensors", "--grads"])
    ours = load_file(tmp_path / "out.safetensors")

    pm.train()
    out = pm(input_ids=ids, labels=ids)
    out.loss.backward()
    base_only = model.get_base_model() if hasattr(model, "get_base_model") else None
    assert base_only is None or base_only is model
    diff = (ours["logits"] - out.logits.detach()).abs().max().item()
    assert diff <= 1e-4, f"logits max abs diff {diff}"
    assert rel(ours["loss"], out.loss.detach()) <= 1e-5
    # The adapter changes the logits: the test would see an adapter that is not applied.
    with torch.no_grad(), pm.disable_adapter():
        plain = pm(input_ids=ids).logits
    assert (plain - out.logits.detach()).abs().max().item() > 1e-3

    theirs = peft_grads(pm)
    ours_grads = {k[len("grad."):]: v for k, v in ours.items() if k.startswith("grad.")}
    assert set(ours_grads) == set(theirs), sorted(set(ours_grads) ^ set(theirs))
    # Every targeted module family is in the comparison.
    assert any(".mlp.experts." in k for k in theirs) == ("experts" in targets)
    assert any(".self_attn." in k for k in theirs) == ("attention" in targets)
    assert any(".shared_expert" in k for k in theirs) == ("shared_experts" in targets)
    dense = [k for k in theirs if ".mlp." in k and ".experts." not in k and ".shared_expert" not in k]
    assert bool(dense) == ("mlp" in targets)
    worst = max((rel(ours_grads[k], theirs[k]), k) for k in theirs if theirs[k].norm() > 0)
    assert worst[0] <= 1e-4, f"gradient of {worst[1]} differs by {worst[0]:.2e} (relative)"
    for k, g in theirs.items():  # experts no token reached: zero on both sides
        if g.norm() == 0:
            assert ours_grads[k].abs().max().item() == 0, k
