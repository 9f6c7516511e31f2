"""LoRA on GPT-OSS against PEFT on transformers v5 (CPU, fp32): adapters on its attention (q/k/v/o,
biased or not, beside the sinks) and on its fused experts (PEFT's target_parameters
mlp.experts.gate_up_proj [E, H, 2F] with gate/up interleaved, and down_proj [E, F, H]): adapter
logits, loss and gradients; 5 AdamW steps; PEFT loads ftd's adapter checkpoint with ftd's logits;
the merged checkpoint is base + scale B A (the experts' per expert, in HF's interleaved columns)
and loads in transformers. Expert parallelism: test_lora_distributed.py."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run
from hf_parity import hf_train_losses, ids_for, parse_losses, rel, write_dataset
from test_gpt_oss_parity import make_model
from test_lora_parity import (assert_lora_resume_equals_uninterrupted, peft_expert_delta, peft_grads, peft_model,
                              write_lora_spec)

peft = pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402
from transformers import GptOssForCausalLM  # noqa: E402

# config, targets: experts with the clamp, top-4 of 8 without attention biases, top-1 of 32 tied
# with the aux loss (most experts see no token: their adapters' gradients are zero on both sides).
CASES = [("gqa2_top2_e4_window4_clamped", ("attention", "experts")),
         ("gqa4_top4_e8_window3_nobias", ("experts",)),
         ("mha_top1_e32_tied_aux", ("attention", "experts"))]


@pytest.mark.parametrize("name,targets", CASES, ids=[c[0] for c in CASES])
def test_adapter_matches_peft(tmp_path, ftd_train, name, targets):
    model, d = make_model(tmp_path, name)
    pm = peft_model(model, targets)
    pm.save_pretrained(tmp_path / "adapter")
    ids = ids_for(model.config)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--adapter", tmp_path / "adapter", "--input", tmp_path / "ids.json",
         "--out", tmp_path / "out.safetensors", "--grads"])
    ours = load_file(tmp_path / "out.safetensors")
    pm.train()
    out = pm(input_ids=ids, labels=ids)
    out.loss.backward()
    assert (ours["logits"] - out.logits.detach()).abs().max().item() <= 1e-4
    assert rel(ours["loss"], out.loss.detach()) <= 1e-5
    with torch.no_grad(), pm.disable_adapter():
        plain = pm(input_ids=ids).logits
    assert (plain - out.logits.detach()).abs().max().item() > 1e-3  # the adapter matters
    theirs = peft_grads(pm)
    ours_grads = {k[len("grad."):]: v for k, v in ours.items() if k.startswith("grad.")}
    assert set(ours_grads) == set(theirs), sorted(set(ours_grads) ^ set(theirs))
    layers = model.config.num_hidden_layers
    attention = [k for k in theirs if ".self_attn." in k]
    experts = [k for k in theirs if ".mlp.experts." in k]
    assert len(attention) == (2 * 4 * layers if "attention" in targets else 0)
    assert len(experts) == 2 * 2 * layers and len(attention) + len(experts) == len(theirs)
    # Both expert adapters nest (gate_up_proj's under base_layer), lora_B [out, r*E] as PEFT's.
    E, F = model.config.num_local_experts, model.config.intermediate_size
    assert theirs["base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight"].shape == (2 * F, 4 * E)
    worst = max((rel(ours_grads[k], theirs[k]), k) for k in theirs if theirs[k].norm() > 0)
    assert worst[0] <= 1e-4, f"gradient of {worst[1]} differs by {worst[0]:.2e} (relative)"
    for k, g in theirs.items():  # experts no token reached: zero on both sides
        if g.norm() == 0:
            assert ours_grads[k].abs().max().item() == 0, k


def test_interleaved_columns_matter(tmp_path, ftd_train):
    """ftd reads lora_B's rows of gate_up in HF's interleaved order: the same adapter with its
    rows put in [gate | up] order gives other logits (the parity above would catch a mix-up)."""
    model, d = make_model(tmp_path, "gqa2_top2_e4_window4_clamped")
    pm = peft_model(model, ("experts",))
    pm.save_pretrained(tmp_path / "adapter")
    ids = ids_for(model.config, batch=1, seq=13)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--adapter", tmp_path / "adapter", "--input", tmp_path / "ids.json",
         "--out", tmp_path / "a.safetensors"])
    f = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(f)
    for k, v in tensors.items():
        if k.endswith("experts.base_layer.lora_B.weight"):
            tensors[k] = torch.cat([v[0::2], v[1::2]]).contiguous()
    save_file(tensors, f)
    run([ftd_train, "forward", "--model", d, "--adapter", tmp_path / "adapter", "--input", tmp_path / "ids.json",
         "--out", tmp_path / "b.safetensors"])
    a, b = load_file(tmp_path / "a.safetensors")["logits"], load_file(tmp_path / "b.safetensors")["logits"]
    assert (a - b).abs().max().item() > 1e-3


def merged_reference(base, adapter, scale):
    """The GPT-OSS checkpoint (fused expert keys) + scale * B A from a PEFT adapter: linears
    W + s B A; the experts' [E, in, out] W[e] + s A[e]^T B[e]^T (PEFT's get_delta_weight)."""
    out = {}
    for k, w in base.items():
        if k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            delta = peft_expert_delta(adapter, k, w.shape[0])  # [E, out, in]
            if delta is not None:
                w = w + scale * delta.transpose(1, 2)
        elif k.endswith(".weight") and f"base_model.model.{k[:-len('.weight')]}.lora_A.weight" in adapter:
            key = f"base_model.model.{k[:-len('.weight')]}"
            w = w + scale * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
        out[k] = w
    return out


@pytest.mark.parametrize("targets", [["attention"], ["attention", "experts"]], ids=["attention", "attention_experts"])
def test_lora_training_matches_peft_and_merges(tmp_path, ftd_train, targets):
    name = "gqa2_top2_e4_window4_clamped"
    model, d = make_model(tmp_path, name)
    base = {k: v.clone() for k, v in load_file(d / "model.safetensors").items()}
    pm = peft_model(model, tuple(targets), r=4, alpha=8)
    pm.save_pretrained(tmp_path / "init")
    ids = ids_for(model.config, batch=2, seq=33)
    write_dataset(tmp_path / "data.jsonl", ids)
    lora = {"rank": 4, "alpha": 8, "targets": targets, "merge": True, "init_adapter": str(tmp_path / "init")}
    write_lora_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out", lora)
    res = run([ftd_train, "train", "--spec", tmp_path / "job.json"])
    ours = parse_losses(res.stdout)
    theirs = hf_train_losses(pm, ids, 5, 2e-2, 2, 0.1, 0.5)
    assert len(ours) == 5, res.stdout
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-4, f"ftd {ours}\nPEFT {theirs}"
    assert theirs[-1] < theirs[0] - 1e-3

    ck = tmp_path / "out" / "checkpoint-5"
    adapter = load_file(ck / "adapter_model.safetensors")
    cfg = json.loads((ck / "adapter_config.json").read_text())
    experts = "experts" in targets
    assert (cfg["target_parameters"] or []) == (["mlp.experts.down_proj", "mlp.experts.gate_up_proj"] if experts
                                                 else [])
    assert not (ck / "vllm").exists()  # no per-expert modules in GPT-OSS: PEFT's stacked layout only
    state = load_file(next((ck / "training_state").glob("rank-*.safetensors")))
    assert state and all("lora_" in k for k in state), sorted(state)[:5]  # adapters only
    trained = {n.replace(".default", ""): p.detach() for n, p in pm.named_parameters() if p.requires_grad}
    assert set(adapter) == set(trained)
    assert any(".mlp.experts." in k for k in adapter) == experts
    assert max(rel(adapter[k], trained[k]) for k in trained) <= 1e-3
    eval_ids = ids_for(model.config, batch=1, seq=13, seed=9)
    (tmp_path / "eval.json").write_text(json.dumps(eval_ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--adapter", ck, "--input", tmp_path / "eval.json",
         "--out", tmp_path / "fwd.safetensors"])
    ftd_logits = load_file(tmp_path / "fwd.safetensors")["logits"]
    fresh, _ = make_model(tmp_path / "fresh", name)
    loaded = PeftModel.from_pretrained(fresh, ck).eval()
    with torch.no_grad():
        assert (loaded(input_ids=eval_ids).logits - ftd_logits).abs().max().item() <= 1e-4

    # Frozen base: the base checkpoint is untouched. Merged: base + 2 * B A on every adapted
    # weight, everything else (biases, sinks, router, unadapted experts) exactly the base;
    # transformers loads it with the adapted logits.
    for k, v in load_file(d / "model.safetensors").items():
        assert torch.equal(v, base[k]), k
    merged = load_file(tmp_path / "out" / "merged" / "model.safetensors")
    assert set(merged) == set(base)
    want = merged_reference(base, adapter, scale=2.0)
    changed = {k for k in base if not torch.equal(want[k], base[k])}
    assert ("model.layers.0.mlp.experts.gate_up_proj" in changed) == experts
    assert ("model.layers.0.mlp.experts.down_proj" in changed) == experts
    assert "model.layers.0.self_attn.q_proj.weight" in changed
    for k, w in base.items():
        if k in changed:
            assert rel(merged[k], want[k]) <= 1e-6, k
        else:
            assert torch.equal(merged[k], w), k
    merged_model = GptOssForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert (merged_model(input_ids=eval_ids).logits - ftd_logits).abs().max().item() <= 1e-4


def test_fresh_expert_adapters_start_at_the_base(tmp_path, ftd_train):
    """The default targets (attention and experts) on GPT-OSS: fresh adapters (A uniform, B zero)
    give the base model's first loss, and the experts' B moves off zero."""
    model, d = make_model(tmp_path, "gqa4_top4_e8_window3_nobias")
    ids = ids_for(model.config, batch=2, seq=33)
    write_dataset(tmp_path / "data.jsonl", ids)
    write_lora_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out", {"rank": 8, "alpha": 16},
                    max_steps=2)
    ours = parse_losses(run([ftd_train, "train", "--spec", tmp_path / "job.json"]).stdout)
    with torch.no_grad():
        base_loss = model(input_ids=ids, labels=ids).loss.item()
    assert len(ours) == 2 and abs(ours[0] - base_loss) <= 1e-5 * base_loss, (ours, base_loss)
    adapter = load_file(tmp_path / "out" / "checkpoint-2" / "adapter_model.safetensors")
    E, H = model.config.num_local_experts, model.config.hidden_size
    A = adapter["base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight"]
    assert A.shape == (8 * E, H)
    for k, v in adapter.items():
        if ".lora_B." in k:
            assert v.abs().max().item() > 0, k


def test_expert_lora_resume_equals_uninterrupted(tmp_path, ftd_train):
    """--resume reloads the adapter from its own checkpoint (lora_B of gate_up de-interleaved back
    into the engine's columns): the losses after the restart are those of one uninterrupted run."""
    model, d = make_model(tmp_path, "gqa2_top2_e4_window4_clamped")
    lora = {"rank": 4, "alpha": 8, "targets": ["attention", "experts"]}
    _, adapter = assert_lora_resume_equals_uninterrupted(ftd_train, tmp_path, model, d, lora, 6, 3, 2)
    assert any(".mlp.experts.base_layer.lora_B" in k for k in adapter)
