"""LoRA (method lora) against PEFT on transformers v5 (CPU, fp32): a PEFT-wrapped model's adapter,
saved by PEFT, applied by `ftd-train forward --adapter` gives the same logits, loss and adapter
gradients, on Qwen3-MoE, DeepSeek-V3, Mixtral, Qwen2-MoE, OLMoE and Nemotron-H (its relu^2 experts
as PEFT's ParamWrappers on mixer.experts.up_proj/down_proj, LatentMoE's projections with them, no
Mamba2 adapters); ftd's LoRA training equals
PEFT's over 5 AdamW steps on each of them; PEFT loads ftd's checkpoints (adapter_config.json +
adapter_model.safetensors) and reproduces ftd's logits; the merged checkpoint is base + B A scale;
resume equals an uninterrupted run; the base stays bit-identical and the optimizer state holds
adapters only."""
import json
import math
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import run
import test_deepseek_parity as deepseek
import test_engine_parity as qwen3
import test_moe_families_parity as families
import test_nemotron_h_parity as nemotron
from hf_parity import hf_train_losses, ids_for, parse_losses, rel, write_dataset

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
    if family == "nemotron_h":
        return nemotron.make_model(tmp_path, name)
    return families.make_model(tmp_path, family, name)


# The module holding a layer's attention projections and dense MLP (Nemotron-H: its mixer).
BLOCKS = ("self_attn", "mlp", "mixer")
LATENT = ["fc1_latent_proj", "fc2_latent_proj"]


def target_of(name):
    """The lora.targets family that adapts parameter or adapter key `name`, or None (Mamba2's
    in_proj/out_proj, routers, norms, embeddings)."""
    parts = name.split(".")
    if ".shared_expert." in name or ".shared_experts." in name:
        return "shared_experts"
    if ".experts." in name or any(f".{m}." in name for m in LATENT):
        return "experts"
    block = next((i for i, p in enumerate(parts) if p in BLOCKS), None)
    if block is None or block + 1 >= len(parts):
        return None
    leaf = parts[block + 1]
    if leaf in MLA_ATTENTION + GQA_ATTENTION:
        return "attention"
    if leaf in ("gate_proj", "up_proj", "down_proj"):
        return "mlp"
    return None


def lora_config(model, targets, r, alpha, rslora=False):
    """The LoraConfig that adapts what ftd's lora.targets name (the same as ftd's exported
    adapter_config.json): attention by module name, experts and dense/shared MLPs by parameter
    (LatentMoE's latent projections, with the experts, by parameter too)."""
    names = {n for n, _ in model.named_parameters()}
    modules, params = set(), []
    for n in sorted(names):
        t = target_of(n)
        if t not in targets or not n.endswith("proj.weight"):  # the fused experts: below
            continue
        if t == "attention":
            modules.add(n.split(".")[-2])
        elif n.endswith("proj.weight"):
            params.append(n)
    if "experts" in targets:
        fused = sorted({n.split(".", 3)[3] for n in names if n.endswith(("experts.gate_up_proj", "experts.up_proj",
                                                                           "experts.down_proj"))})
        params += fused  # mlp.experts.gate_up_proj / down_proj; Nemotron-H's mixer.experts.up_proj / down_proj
    return LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=sorted(modules),
                      target_parameters=params, lora_dropout=0.0)


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
    ("nemotron_h", "g1_chunk8_dense_experts", ("attention", "experts", "mlp", "shared_experts"), False),
    ("nemotron_h", "g2_chunk19_latent_grouped", ("attention", "experts", "mlp", "shared_experts"), True),
    ("nemotron_h", "g4_chunk4_latent_top1", ("experts",), False),
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
    # Every targeted module family is in the comparison, and nothing else.
    assert {target_of(k) for k in theirs} == set(targets), sorted(theirs)
    if "experts" in targets and getattr(model.config, "moe_latent_size", None):  # LatentMoE: with the experts
        assert any(".fc1_latent_proj." in k for k in theirs) and any(".fc2_latent_proj." in k for k in theirs)
    worst = max((rel(ours_grads[k], theirs[k]), k) for k in theirs if theirs[k].norm() > 0)
    assert worst[0] <= 1e-4, f"gradient of {worst[1]} differs by {worst[0]:.2e} (relative)"
    for k, g in theirs.items():  # experts no token reached: zero on both sides
        if g.norm() == 0:
            assert ours_grads[k].abs().max().item() == 0, k


def write_lora_spec(path, model_dir, data, out, lora, precision="auto", **hp):
    spec = {"base_model": str(model_dir), "datasets": {"train": str(data), "format": "tokens"}, "output": str(out),
            "method": "lora", "lora": lora, "precision": precision,
            "hyperparameters": {"max_steps": 5, "global_batch": 2, "micro_batch": 1, "seq_len": 64, "lr": 2e-2,
                                "schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, **hp},
            "device": "cpu", "dtype": "fp32"}
    path.write_text(json.dumps(spec))


TRAIN_CASES = [
    ("qwen3_moe", "top2_tied_sparse_step2", ["attention", "experts", "mlp"], False),
    ("deepseek_v3", "qlora_groups4of2_shared1_dense1_yarn", ["attention", "experts", "shared_experts"], True),
    ("qwen2_moe", "dense_mix_norm_gqa", ["attention", "experts", "shared_experts"], False),
    ("mixtral", "gqa_top2", ["attention", "experts"], False),
    ("olmoe", "clip_gqa_top3", ["attention", "experts"], False),
    ("nemotron_h", "g2_chunk19_latent_grouped", ["attention", "experts", "mlp", "shared_experts"], False),
    ("nemotron_h", "g1_chunk8_dense_experts", ["attention", "experts"], True),
]


@pytest.mark.parametrize("family,name,targets,rslora", TRAIN_CASES, ids=[f"{c[0]}-{c[1]}" for c in TRAIN_CASES])
def test_lora_training_matches_peft_and_exports_for_peft(tmp_path, ftd_train, family, name, targets, rslora):
    model, d = make(tmp_path, family, name)
    base_before = {k: v.clone() for k, v in load_file(d / "model.safetensors").items()}
    pm = peft_model(model, targets, r=4, alpha=8, rslora=rslora)
    pm.save_pretrained(tmp_path / "init")
    ids = ids_for(model.config, batch=2, seq=33)
    write_dataset(tmp_path / "data.jsonl", ids)
    lora = {"rank": 4, "alpha": 8, "targets": targets, "use_rslora": rslora, "merge": True,
            "init_adapter": str(tmp_path / "init")}
    write_lora_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out", lora)
    res = run([ftd_train, "train", "--spec", tmp_path / "job.json"])
    ours = parse_losses(res.stdout)
    # HF Trainer's AdamW: the frozen base gets no gradient, so only the adapters move.
    theirs = hf_train_losses(pm, ids, 5, 2e-2, 2, 0.1, 0.5)
    assert len(ours) == 5, res.stdout
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-4, f"ftd {ours}\nPEFT {theirs}"
    assert theirs[-1] < theirs[0] - 1e-3  # the adapters learned something

    ck = tmp_path / "out" / "checkpoint-5"
    assert (ck / "adapter_config.json").exists() and (ck / "adapter_model.safetensors").exists()
    assert not (ck / "model.safetensors").exists()  # the base is not copied into a LoRA checkpoint
    cfg = json.loads((ck / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(d) and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["use_rslora"] == rslora
    # The optimizer state holds the adapters only (no base parameter, no moment of one).
    state = load_file(next((ck / "training_state").glob("rank-*.safetensors")))
    assert state and all("lora_" in k for k in state), sorted(state)[:5]

    # The exported adapter, loaded by PEFT onto the base, gives ftd's logits (and PEFT's own
    # trained model's: the same adapter values).
    ours_adapter = load_file(ck / "adapter_model.safetensors")
    peft_trained = {n.replace(".default", ""): p.detach() for n, p in pm.named_parameters() if p.requires_grad}
    assert set(ours_adapter) == set(peft_trained)
    worst = max(rel(ours_adapter[k], peft_trained[k]) for k in peft_trained)
    assert worst <= 1e-3, worst
    eval_ids = ids_for(model.config, batch=1, seq=13, seed=9)
    (tmp_path / "eval.json").write_text(json.dumps(eval_ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--adapter", ck, "--input", tmp_path / "eval.json",
         "--out", tmp_path / "fwd.safetensors"])
    ftd_logits = load_file(tmp_path / "fwd.safetensors")["logits"]
    fresh, _ = make(tmp_path / "fresh", family, name)
    loaded = PeftModel.from_pretrained(fresh, ck)
    loaded.eval()
    with torch.no_grad():
        peft_logits = loaded(input_ids=eval_ids).logits
    assert (peft_logits - ftd_logits).abs().max().item() <= 1e-4

    # Frozen base: the base checkpoint is untouched, and the merged checkpoint is exactly
    # base + scale * B A (experts: per expert) of the exported adapter.
    for k, v in load_file(d / "model.safetensors").items():
        assert torch.equal(v, base_before[k]), k
    merged = {}
    for f in sorted((tmp_path / "out" / "merged").glob("*.safetensors")):
        merged.update(load_file(f))
    plain = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    want = merged_reference(plain, ours_adapter, scale=8 / (math.sqrt(4) if rslora else 4), family=family)
    for k in set(merged) - set(want):  # buffers (DeepSeek-V3's selection bias): as in the base
        assert k.endswith("e_score_correction_bias") and torch.equal(merged[k], base_before[k]), k
    assert set(want) <= set(merged)
    worst = max((rel(merged[k], want[k]), k) for k in want)
    assert worst[0] <= 1e-6, worst
    changed = [k for k in want if not torch.equal(want[k], base_before[k])]
    assert changed and all(("lora" not in k) for k in changed)
    # transformers loads the merged checkpoint and gives the adapted logits.
    merged_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.float32)
    with torch.no_grad():
        merged_logits = merged_model(input_ids=eval_ids, use_cache=False).logits
    assert (merged_logits - ftd_logits).abs().max().item() <= 1e-4


def peft_expert_delta(adapter, param, E):
    """B[e] A[e] [E, out, in] of PEFT's ParamWrapper on fused expert parameter `param` (e.g.
    model.layers.0.mlp.experts.gate_up_proj), or None when the adapter has none. gate_up_proj
    (Nemotron-H: up_proj) is PEFT's innermost wrapper: under base_layer when down_proj has one too."""
    module = param.rsplit(".", 1)[0]
    both = f"base_model.model.{module}.base_layer.lora_A.weight" in adapter
    inner = param.endswith((".gate_up_proj", ".up_proj"))
    key = f"base_model.model.{module}{'.base_layer' if both and inner else ''}"
    if f"{key}.lora_A.weight" not in adapter:
        return None
    A, B = adapter[f"{key}.lora_A.weight"], adapter[f"{key}.lora_B.weight"]
    return torch.einsum("ore,eri->eoi", B.reshape(B.shape[0], -1, E), A.reshape(E, -1, A.shape[1]))


def merged_reference(base_model, adapter, scale, family="qwen3_moe"):
    """Base weights (checkpoint names, per-expert keys) + scale * B A from a PEFT adapter."""
    merged = {}
    with torch.no_grad():
        for n, p in base_model.named_parameters():
            w = p.detach().clone()
            if n.endswith((".experts.gate_up_proj", ".experts.up_proj", ".experts.down_proj")):  # [E, out, in]
                delta = peft_expert_delta(adapter, n, w.shape[0])
                if delta is not None:
                    w = w + scale * delta
            else:
                key = f"base_model.model.{n[: -len('.weight')]}"
                if f"{key}.lora_A.weight" in adapter:
                    w = w + scale * adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"]
            merged[n] = w
    if getattr(base_model.config, "tie_word_embeddings", False):
        merged.pop("lm_head.weight", None)
    if family == "nemotron_h":
        return nemotron.checkpoint_tensors(merged)
    moe, (gate, up, down) = ("block_sparse_moe", ("w1", "w3", "w2")) if family == "mixtral" else \
        ("mlp", ("gate_proj", "up_proj", "down_proj"))
    out = {}
    for n, w in merged.items():
        if not n.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            out[n] = w
            continue
        layer = n.rsplit(".", 1)[0].replace(".mlp.experts", f".{moe}.experts") + "."
        for e in range(w.shape[0]):
            if n.endswith("gate_up_proj"):
                F = w.shape[1] // 2
                out[f"{layer}{e}.{gate}.weight"] = w[e, :F]
                out[f"{layer}{e}.{up}.weight"] = w[e, F:]
            else:
                out[f"{layer}{e}.{down}.weight"] = w[e]
    if family == "mixtral":  # the checkpoint keeps v4's module name (transformers v5 renames it on load)
        out = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in out.items()}
    return out


def assert_lora_resume_equals_uninterrupted(ftd_train, tmp_path, model, model_dir, lora, steps, stop_after, warmup,
                                            precision="auto"):
    """One LoRA run of `steps` steps on 6 random rows of 21 tokens against the same run stopped
    after `stop_after` and resumed: the same printed losses (identical, not merely close) and the
    same final adapter, byte for byte. Returns the uninterrupted run's losses and adapter."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    write_dataset(tmp_path / "data.jsonl", torch.randint(0, model.config.vocab_size, (6, 21), generator=g))
    hp = dict(max_steps=steps, warmup_steps=warmup, precision=precision)
    write_lora_spec(tmp_path / "full.json", model_dir, tmp_path / "data.jsonl", tmp_path / "full", lora, **hp)
    full_run = run([ftd_train, "train", "--spec", tmp_path / "full.json"])
    (tmp_path / "full.log").write_text(full_run.stdout)
    full = parse_losses(full_run.stdout)
    write_lora_spec(tmp_path / "split.json", model_dir, tmp_path / "data.jsonl", tmp_path / "split", lora, **hp)
    first = parse_losses(run([ftd_train, "train", "--spec", tmp_path / "split.json", "--stop-after",
                              stop_after]).stdout)
    second = run([ftd_train, "train", "--spec", tmp_path / "split.json", "--resume"])
    assert "resumed from" in second.stdout
    rest = parse_losses(second.stdout)
    assert len(full) == steps and len(first) == stop_after and len(rest) == steps - stop_after, (full, first, rest)
    assert first + rest == full
    assert full[-1] < full[0]
    a = load_file(tmp_path / "full" / f"checkpoint-{steps}" / "adapter_model.safetensors")
    b = load_file(tmp_path / "split" / f"checkpoint-{steps}" / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    return full, a


def test_lora_resume_equals_uninterrupted(tmp_path, ftd_train):
    model, d = qwen3.make_model(tmp_path, "top2_tied_sparse_step2")
    lora = {"rank": 8, "alpha": 16, "targets": ["attention", "experts"]}  # fresh adapters: A random, B zero
    full, _ = assert_lora_resume_equals_uninterrupted(ftd_train, tmp_path, model, d, lora, 8, 4, 3)
    # A fresh adapter starts as PEFT's does: B zero, so the first loss is the base model's (a
    # full fine-tune's first loss on the same rows).
    spec = json.loads((tmp_path / "full.json").read_text())
    spec.update(method="full", output=str(tmp_path / "plain"))
    del spec["lora"]
    (tmp_path / "plain.json").write_text(json.dumps(spec))
    plain = parse_losses(run([ftd_train, "train", "--spec", tmp_path / "plain.json", "--stop-after", "1"]).stdout)
    assert abs(full[0] - plain[0]) <= 1e-6 * abs(plain[0]), (full[0], plain[0])


def test_lora_precision_compact_takes_effect(tmp_path, ftd_train):
    """precision: compact for the adapters (8-bit moments, 4 bytes of state a bf16 parameter
    instead of fp32_master's 12): the job says so, its checkpoint holds the compact state, resume
    equals uninterrupted, and it trains as fp32_master does within the 8-bit moments' rounding
    (not identically: the setting took effect)."""
    model, d = qwen3.make_model(tmp_path, "top2_tied_sparse_step2")
    lora = {"rank": 8, "alpha": 16, "targets": ["attention", "experts"]}
    compact, adapter = assert_lora_resume_equals_uninterrupted(ftd_train, tmp_path / "c", model, d, lora, 8, 4, 3,
                                                               precision="compact")
    log = (tmp_path / "c" / "full.log").read_text()
    assert "precision compact" in log and "compact AdamW state" in log, log
    state = json.loads((tmp_path / "c" / "full" / "checkpoint-8" / "training_state" / "trainer_state.json").read_text())
    assert state["precision"] == "compact"
    fp32, fp32_adapter = assert_lora_resume_equals_uninterrupted(ftd_train, tmp_path / "f", model, d, lora, 8, 4, 3)
    assert "fp32_master AdamW state" in (tmp_path / "f" / "full.log").read_text()
    assert compact[0] == fp32[0]  # B starts at zero: the base model's loss
    assert compact != fp32
    assert max(abs(a - b) / abs(b) for a, b in zip(compact, fp32)) < 2e-3, (compact, fp32)
    assert set(adapter) == set(fp32_adapter)
    moved = {k: (fp32_adapter[k] - adapter[k]).norm() / fp32_adapter[k].norm() for k in adapter}
    assert max(moved.values()) < 0.1, moved


def test_lora_spec_errors_name_the_field(tmp_path, ftd_train):
    model, d = qwen3.make_model(tmp_path, "top1_gqa4_dense_mix")
    write_dataset(tmp_path / "data.jsonl", ids_for(model.config))
    cases = [
        ({"dropout": 0.1}, "lora.dropout"),
        ({"rank": -1}, "lora.rank"),
        ({"rank": 5000}, "lora.rank"),
        ({"alpha": -1}, "lora.alpha"),
        ({"targets": ["router"]}, "lora.targets: router"),
        ({"targets": ["attention", "embeddings"]}, "lora.targets"),
        ({"targets": ["shared_experts"]}, "lora.targets: shared_experts matches nothing"),
        ({"init_adapter": str(tmp_path / "missing")}, "lora.init_adapter"),
    ]
    for lora, message in cases:
        write_lora_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out", lora)
        res = subprocess.run([str(ftd_train), "train", "--spec", str(tmp_path / "job.json")], capture_output=True,
                             text=True)
        assert res.returncode != 0 and message in res.stderr, (lora, res.stderr)
    spec = json.loads((tmp_path / "job.json").read_text())
    spec["method"] = "full"
    (tmp_path / "job.json").write_text(json.dumps(spec))
    res = subprocess.run([str(ftd_train), "train", "--spec", str(tmp_path / "job.json")], capture_output=True,
                         text=True)
    assert res.returncode != 0 and "lora: only with method lora" in res.stderr, res.stderr


@pytest.mark.parametrize("family,name", [("qwen3_moe", "top1_gqa4_dense_mix"), ("mixtral", "gqa_top2")])
def test_per_expert_export_loads_in_peft_with_ftd_logits(tmp_path, ftd_train, family, name):
    """checkpoint-N/vllm: the per-expert layout (vLLM's MoE LoRA keys, the checkpoint's expert
    names) that PEFT converts onto the transformers v5 model: the same logits as ftd's."""
    model, d = make(tmp_path, family, name)
    ids = ids_for(model.config, batch=2, seq=33)
    write_dataset(tmp_path / "data.jsonl", ids)
    lora = {"rank": 4, "alpha": 8, "targets": ["attention", "experts"]}
    write_lora_spec(tmp_path / "job.json", d, tmp_path / "data.jsonl", tmp_path / "out", lora, max_steps=3)
    run([ftd_train, "train", "--spec", tmp_path / "job.json"])
    ck = tmp_path / "out" / "checkpoint-3"
    per_expert = load_file(ck / "vllm" / "adapter_model.safetensors")
    cfg = json.loads((ck / "vllm" / "adapter_config.json").read_text())
    E = model.config.num_local_experts if family == "mixtral" else model.config.num_experts
    module = "block_sparse_moe" if family == "mixtral" else "mlp"
    gate, up, down = ("w1", "w3", "w2") if family == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", gate, up, down}
    for e in range(E):
        for proj in (gate, up, down):
            assert f"base_model.model.model.layers.0.{module}.experts.{e}.{proj}.lora_A.weight" in per_expert
    eval_ids = ids_for(model.config, batch=1, seq=11, seed=4)
    (tmp_path / "eval.json").write_text(json.dumps(eval_ids.tolist()))
    run([ftd_train, "forward", "--model", d, "--adapter", ck, "--input", tmp_path / "eval.json",
         "--out", tmp_path / "fwd.safetensors"])
    ftd_logits = load_file(tmp_path / "fwd.safetensors")["logits"]
    base = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    with torch.no_grad():
        plain = base(input_ids=eval_ids).logits
    loaded = PeftModel.from_pretrained(base, ck / "vllm")
    loaded.eval()
    with torch.no_grad():
        got = loaded(input_ids=eval_ids).logits
    assert (got - ftd_logits).abs().max().item() <= 1e-4
    assert (plain - ftd_logits).abs().max().item() > 1e-4  # the adapter was applied


def test_resume_refuses_a_checkpoint_of_the_other_method(tmp_path, ftd_train):
    model, d = qwen3.make_model(tmp_path, "top1_gqa4_dense_mix")
    write_dataset(tmp_path / "data.jsonl", ids_for(model.config))
    write_lora_spec(tmp_path / "lora.json", d, tmp_path / "data.jsonl", tmp_path / "out", {"rank": 4}, max_steps=1)
    spec = json.loads((tmp_path / "lora.json").read_text())
    spec["method"] = "full"
    del spec["lora"]
    (tmp_path / "full.json").write_text(json.dumps(spec))
    run([ftd_train, "train", "--spec", tmp_path / "full.json"])
    res = subprocess.run([str(ftd_train), "train", "--spec", str(tmp_path / "lora.json"), "--resume"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "was written by a method full run" in res.stderr, res.stderr
    # And a LoRA checkpoint of another rank is refused by name.
    write_lora_spec(tmp_path / "lora8.json", d, tmp_path / "data.jsonl", tmp_path / "out8", {"rank": 8}, max_steps=1)
    run([ftd_train, "train", "--spec", tmp_path / "lora8.json"])
    write_lora_spec(tmp_path / "lora4.json", d, tmp_path / "data.jsonl", tmp_path / "out8", {"rank": 4}, max_steps=2)
    res = subprocess.run([str(ftd_train), "train", "--spec", str(tmp_path / "lora4.json"), "--resume"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "holds a rank 8 alpha 16 adapter" in res.stderr, res.stderr


def test_nemotron_h_mamba_adapters_are_refused_by_name(tmp_path, ftd_train):
    """Mamba2's in_proj/out_proj take no adapter in ftd (no target family is theirs): a PEFT
    adapter on them is refused at load, naming the tensor, not silently dropped."""
    model, d = nemotron.make_model(tmp_path, "g1_chunk8_dense_experts")
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "in_proj"], lora_dropout=0.0))
    pm.save_pretrained(tmp_path / "adapter")
    (tmp_path / "ids.json").write_text(json.dumps(ids_for(model.config).tolist()))
    res = subprocess.run([str(ftd_train), "forward", "--model", str(d), "--adapter", str(tmp_path / "adapter"),
                          "--input", str(tmp_path / "ids.json"), "--out", str(tmp_path / "out.safetensors")],
                         capture_output=True, text=True)
    assert res.returncode != 0, res.stdout
    assert "mixer.in_proj.lora_" in res.stderr and "adapts nothing the engine knows" in res.stderr, res.stderr
