"""LoRA on GPT-OSS's attention (q/k/v/o, biased or not, beside the sinks) against PEFT on
transformers v5 (CPU, fp32): adapter logits, loss and gradients; 5 AdamW steps; PEFT loads ftd's
adapter checkpoint with ftd's logits; the merged checkpoint is base + scale B A and loads in
transformers. (LoRA on its experts is refused: test_gpt_oss_parity.py.)"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run
from hf_parity import hf_train_losses, ids_for, parse_losses, rel, write_dataset
from test_gpt_oss_parity import make_model
from test_lora_parity import peft_grads, peft_model, write_lora_spec

peft = pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402
from transformers import GptOssForCausalLM  # noqa: E402

CASES = ["gqa2_top2_e4_window4_clamped", "gqa4_top4_e8_window3_nobias"]


@pytest.mark.parametrize("name", CASES)
def test_attention_adapter_matches_peft(tmp_path, ftd_train, name):
    model, d = make_model(tmp_path, name)
    pm = peft_model(model, ("attention",))
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
    assert all(".self_attn." in k for k in theirs) and len(theirs) == 2 * 4 * model.config.num_hidden_layers
    worst = max((rel(ours_grads[k], theirs[k]), k) for k in theirs)
    assert worst[0] <= 1e-4, f"gradient of {worst[1]} differs by {worst[0]:.2e} (relative)"


def test_attention_lora_training_matches_peft_and_merges(tmp_path, ftd_train):
    name = "gqa2_top2_e4_window4_clamped"
    model, d = make_model(tmp_path, name)
    base = {k: v.clone() for k, v in load_file(d / "model.safetensors").items()}
    pm = peft_model(model, ("attention",), r=4, alpha=8)
    pm.save_pretrained(tmp_path / "init")
    ids = ids_for(model.config, batch=2, seq=33)
    write_dataset(tmp_path / "data.jsonl", ids)
    lora = {"rank": 4, "alpha": 8, "targets": ["attention"], "merge": True, "init_adapter": str(tmp_path / "init")}
    write_lora_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out", lora)
    res = run([ftd_train, "train", "--spec", tmp_path / "job.json"])
    ours = parse_losses(res.stdout)
    theirs = hf_train_losses(pm, ids, 5, 2e-2, 2, 0.1, 0.5)
    assert len(ours) == 5, res.stdout
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-4, f"ftd {ours}\nPEFT {theirs}"
    assert theirs[-1] < theirs[0] - 1e-3

    ck = tmp_path / "out" / "checkpoint-5"
    adapter = load_file(ck / "adapter_model.safetensors")
    trained = {n.replace(".default", ""): p.detach() for n, p in pm.named_parameters() if p.requires_grad}
    assert set(adapter) == set(trained)
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

    # Merged: base + 2 * B A on the attention projections, everything else (fused experts
    # included) exactly the base; transformers loads it with the adapted logits.
    merged = load_file(tmp_path / "out" / "merged" / "model.safetensors")
    assert set(merged) == set(base)
    for k, w in base.items():
        key = f"base_model.model.{k[:-len('.weight')]}"
        if k.endswith(".weight") and f"{key}.lora_A.weight" in adapter:
            want = w + 2.0 * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
            assert rel(merged[k], want) <= 1e-6, k
        else:
            assert torch.equal(merged[k], w), k
    merged_model = GptOssForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert (merged_model(input_ids=eval_ids).logits - ftd_logits).abs().max().item() <= 1e-4
