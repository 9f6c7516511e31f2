"""LoRA through the real binary on CPU with Gloo: `ftd-train launch --nproc 2 -- train` with dp = 2
and ep in {1, 2} (the experts' adapters sharded with their experts, gathered into one PEFT
adapter at the checkpoint; the dense adapters under ZeRO-2) against one process training on the
same global batch, on Qwen3-MoE, DeepSeek-V3 (MLA, shared experts) and GPT-OSS (fused, biased
experts with gate/up interleaved; its merged checkpoint, one fused tensor per layer, gathered too)."""
import json

import pytest
from safetensors.torch import load_file

from conftest import clean_env, run
from test_distributed import load_checkpoint, losses
from test_moe_families_distributed import workdir  # noqa: F401 (the fixture: a token dataset)

NPROC = 2
STEPS = 3
PRESETS = ["tiny", "tiny-deepseek-v3", "tiny-gpt-oss"]


def train(ftd_train, workdir, preset, name, nproc=1, ep=1):
    model = workdir / preset
    if not model.exists():
        run([ftd_train, "init-model", "--preset", preset, "--dtype", "fp32", "--seed", "3", "--out", model])
    targets = ["attention", "experts"] + (["shared_experts", "mlp"] if "deepseek" in preset else [])
    # adam_eps 1e-6: see test_distributed.py (the ranks sum gradients in another order).
    spec = {"base_model": str(model), "datasets": {"train": str(workdir / "data.jsonl")},
            "output": str(workdir / f"{preset}_{name}"), "method": "lora",
            "lora": {"rank": 4, "alpha": 8, "targets": targets, "merge": "gpt-oss" in preset},
            "hyperparameters": {"max_steps": STEPS, "global_batch": 4, "micro_batch": 1, "seq_len": 48, "lr": 1e-2,
                                "schedule": "cosine", "warmup_steps": 1, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, "adam_eps": 1e-6},
            "parallelism": {"ep_size": ep},
            "device": "cpu", "dtype": "fp32"}
    path = workdir / f"{preset}_{name}.json"
    path.write_text(json.dumps(spec))
    cmd = [ftd_train, "train", "--spec", path]
    if nproc > 1:
        cmd = [ftd_train, "launch", "--nproc", nproc, "--"] + cmd[1:]
    res = run(cmd, env=clean_env(), timeout=600)
    ck = workdir / f"{preset}_{name}" / f"checkpoint-{STEPS}"
    return res.stdout, load_file(ck / "adapter_model.safetensors"), json.loads((ck / "adapter_config.json").read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_lora_ep1_and_ep2_equal_one_process(ftd_train, workdir, preset):
    single_out, single, single_cfg = train(ftd_train, workdir, preset, "single")
    ref_losses = losses(single_out)
    assert len(ref_losses) == STEPS, single_out
    assert any(".mlp.experts.base_layer.lora_A" in k for k in single)
    for ep in (1, 2):
        stdout, adapter, cfg = train(ftd_train, workdir, preset, f"ep{ep}", nproc=NPROC, ep=ep)
        assert f"dp 2, ep {ep}" in stdout, stdout
        got = losses(stdout)
        assert len(got) == STEPS, stdout
        assert max(abs(a - b) for a, b in zip(got, ref_losses)) <= 1e-5, f"ep={ep}: {got}\nsingle: {ref_losses}"
        assert cfg == single_cfg
        assert sorted(adapter) == sorted(single)  # every expert's adapter, gathered from both ranks
        worst = max(((adapter[k] - single[k]).abs().max().item(), k) for k in single)
        assert worst[0] <= 1e-6, f"ep={ep}: {worst[1]} differs by {worst[0]:.2e}"
        # It trained: every B moved off zero (experts included).
        for k, v in adapter.items():
            if ".lora_B." in k and ".experts." in k:
                assert v.abs().max().item() > 0, k
        if "gpt-oss" in preset:  # the merged checkpoint: every expert, one file, as one process's
            merged = load_checkpoint(workdir / f"{preset}_ep{ep}" / "merged")
            want = load_checkpoint(workdir / f"{preset}_single" / "merged")
            assert sorted(merged) == sorted(want)
            worst = max(((merged[k] - want[k]).abs().max().item(), k) for k in want)
            assert worst[0] <= 1e-6, f"ep={ep}: merged {worst[1]} differs by {worst[0]:.2e}"
