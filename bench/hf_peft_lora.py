"""HF Transformers v5 + PEFT LoRA on the Qwen3-30B-A3B shape (random init, bf16 base) on one GPU:
the LoRA baseline of bench/run_lora_gpu.sh. r 16, alpha 32 on q/k/v/o (target_modules) and the
fused experts' gate_up_proj and down_proj (target_parameters), AdamW (fused) on the adapters,
the optimizer step inside the timer. With --save-init DIR it first writes the random base as an HF
checkpoint and with --save-adapter DIR the initial adapter (PEFT's init), so that ftd-bench runs
on the same weights. Prints one JSON line per (seq, activation checkpointing) setting; a setting
that runs out of memory prints "oom": true."""
import argparse
import json
import os
import time

import peft
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--layers", type=int, default=48)
ap.add_argument("--seqs", default="4096")
ap.add_argument("--ckpt", default="1,0", help="activation checkpointing settings to run: 1 (on), 0 (off)")
ap.add_argument("--steps", type=int, default=6, help="steps per setting; the median of all but the first two")
ap.add_argument("--rank", type=int, default=16)
ap.add_argument("--alpha", type=float, default=32)
ap.add_argument("--save-init", default="")
ap.add_argument("--save-adapter", default="")
a = ap.parse_args()

def save_hub_layout(model, cfg, out, shard_bytes=2 << 30):
    """Writes the model as the hub stores Qwen3-MoE (one gate/up/down tensor per expert), a shard at
    a time through the host. save_pretrained converts the whole fused model at once on the GPU,
    which does not fit beside the 57 GiB base on an 80 GB card, nor does the base in host memory
    beside its copy in /dev/shm."""
    os.makedirs(out, exist_ok=True)
    cfg.save_pretrained(out)
    shard, size, names, index = {}, 0, [], {}

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(names) + 1:05d}.safetensors"
            safetensors.torch.save_file(shard, os.path.join(out, name), metadata={"format": "pt"})
            names.append(name)
            index.update({k: name for k in shard})
        shard, size = {}, 0

    def add(name, t):
        nonlocal size
        shard[name] = t.detach().to("cpu").contiguous()
        size += t.numel() * t.element_size()
        if size >= shard_bytes:
            flush()

    F = cfg.moe_intermediate_size
    for name, p in model.named_parameters():
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2F, H]: gate rows, then up rows
            prefix = name[: -len("gate_up_proj")]
            for e in range(p.shape[0]):
                add(f"{prefix}{e}.gate_proj.weight", p[e, :F])
                add(f"{prefix}{e}.up_proj.weight", p[e, F:])
        elif name.endswith("mlp.experts.down_proj"):  # [E, H, F]
            prefix = name[: -len("down_proj")]
            for e in range(p.shape[0]):
                add(f"{prefix}{e}.down_proj.weight", p[e])
        else:
            add(name, p)
    flush()
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": index}, f)


cfg = AutoConfig.for_model("qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                           num_hidden_layers=a.layers, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                           num_experts=128, num_experts_per_tok=8, vocab_size=151936, max_position_embeddings=40960,
                           rope_theta=1e6, rms_norm_eps=1e-6, norm_topk_prob=True, tie_word_embeddings=False,
                           output_router_logits=False)
torch.manual_seed(0)
t0 = time.time()
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa",
                                             experts_implementation="grouped_mm")
print(json.dumps({"init_s": round(time.time() - t0, 1), "params": sum(p.numel() for p in model.parameters()),
                  "base_gib": round(torch.cuda.memory_allocated() / 2**30, 2), "peft": peft.__version__,
                  "transformers": transformers.__version__, "torch": torch.__version__}), flush=True)
if a.save_init:
    t0 = time.time()
    save_hub_layout(model, cfg, a.save_init)
    print(json.dumps({"saved_init": a.save_init, "save_s": round(time.time() - t0, 1)}), flush=True)
lc = LoraConfig(r=a.rank, lora_alpha=a.alpha, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
model = get_peft_model(model, lc)
if a.save_adapter:
    model.save_pretrained(a.save_adapter)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
# The same token ids as ftd-bench: torch.randint(0, V, (1, S), generator=manual_seed(1234)).
for seq in [int(s) for s in a.seqs.split(",")]:
    ids = torch.randint(0, cfg.vocab_size, (1, seq), generator=torch.Generator().manual_seed(1234)).cuda()
    for ckpt in [c == "1" for c in a.ckpt.split(",")]:
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        else:
            model.gradient_checkpointing_disable()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        try:
            for _ in range(a.steps):
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = model(input_ids=ids, labels=ids)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
                losses.append(round(out.loss.item(), 4))
                del out
            timed = sorted(times[2:])
            med = timed[len(timed) // 2]
            print(json.dumps({"impl": "hf-v5+peft", "layers": a.layers, "seq": seq, "ckpt": ckpt,
                              "trainable": trainable, "tps": round(seq / med), "step_ms": round(med * 1e3, 1),
                              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "losses": losses,
                              "gpu": torch.cuda.get_device_name(), "optimizer_in_timer": True}), flush=True)
        except torch.OutOfMemoryError:
            print(json.dumps({"impl": "hf-v5+peft", "layers": a.layers, "seq": seq, "ckpt": ckpt, "oom": True,
                              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}), flush=True)
            opt.zero_grad(set_to_none=True)
            out = None
            torch.cuda.empty_cache()
