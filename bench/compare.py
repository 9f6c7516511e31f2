"""Side-by-side table of ftd-bench and the HF v5 baseline from run_gpu.sh's JSON lines."""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])


def load(p):
    try:
        return json.loads(p.read_text().strip().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return None


rows = ["| layers | engine | gate | TPS | step ms | fwd ms | bwd ms | TFLOP/s | MFU | peak GiB | TPS ×HF | mem ×HF | first losses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for hf_file in sorted(out.glob("hf-*.json"), key=lambda p: int(p.stem.split("-")[1])):
    L = hf_file.stem.split("-")[1]
    hf = load(hf_file)
    if not hf:
        continue
    mfu = hf["tflops"] / 989.0
    rows.append(f"| {L} | HF v5 ({hf.get('experts')}, {hf.get('attn')}) | real | {hf['tps']} | {hf['step_ms']} | "
                f"{hf['fwd_ms']} | {hf['bwd_ms']} | {hf['tflops']} | {mfu:.3f} | {hf['peak_gib']} | 1.00 | 1.00 | "
                f"{hf['losses'][:3]} |")
    for gate in ("real", "balanced"):
        f = load(out / f"ftd-{L}-{gate}.json")
        if not f:
            continue
        rows.append(f"| {L} | ftd | {gate} | {f['tps']} | {f['step_ms']} | {f['fwd_ms']} | {f['bwd_ms']} | "
                    f"{f['tflops']} | {f['mfu']} | {f['peak_gib']} | {f['tps'] / hf['tps']:.2f} | "
                    f"{f['peak_gib'] / hf['peak_gib']:.2f} | {f['losses'][:3]} |")
print("\n".join(rows))
