"""Interoperability of the engine's safetensors reader/writer (engine/io) with the Python
`safetensors` package and with checkpoints written by transformers' save_pretrained.

Through `ftd-train st-copy IN OUT [--max-shard-bytes N]`, which reads every tensor with
SafetensorsReader and writes them with SaveSafetensors: files written in Python load in C++
with identical values (the copy is read back in Python), and files written in C++ load in
Python (whose Rust reader validates the layout strictly: contiguous data, full coverage).

The binary is found under $FTD_BUILD_DIR/bin (default build/); build it with
`cmake --build <dir> --target ftd-train`.
"""
import json
import os
import pathlib
import shutil
import struct
import subprocess

import pytest

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
# Nothing is reachable from CI: never let transformers wait on the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _binary() -> pathlib.Path:
    build = pathlib.Path(os.environ.get("FTD_BUILD_DIR", "build"))
    if not build.is_absolute():
        build = REPO / build
    return build / "bin" / "ftd-train"


FTD_TRAIN = _binary()
pytestmark = pytest.mark.skipif(
    not FTD_TRAIN.exists(),
    reason=f"{FTD_TRAIN} is not built (cmake --build <dir> --target ftd-train; set FTD_BUILD_DIR)")


def st_copy(src, dst, max_shard_bytes=None, check=True):
    cmd = [str(FTD_TRAIN), "st-copy", str(src), str(dst)]
    if max_shard_bytes is not None:
        cmd += ["--max-shard-bytes", str(max_shard_bytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def sample_tensors():
    g = torch.Generator().manual_seed(1234)
    return {
        "model.embed_tokens.weight": torch.randn(17, 8, generator=g).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g).half(),
        "model.layers.0.mlp.experts.3.down_proj.weight": torch.randn(3, 5, 2, generator=g),
        "fp64": torch.randn(4, generator=g, dtype=torch.float64),
        "i64": torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4),
        "i32": torch.randint(-(2**31), 2**31 - 1, (9,), generator=g, dtype=torch.int32),
        "i16": torch.randint(-(2**15), 2**15 - 1, (9,), generator=g, dtype=torch.int16),
        "i8": torch.randint(-128, 127, (9,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "bool": torch.randint(0, 2, (11,), generator=g).bool(),
        "f8_e4m3": torch.randn(6, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(6, generator=g).to(torch.float8_e5m2),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        # Special values must survive bit-exactly.
        "specials": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40]),
    }


def assert_same(expected: dict, actual: dict):
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        # Bitwise: covers NaN, -0.0, denormals and dtypes torch.equal does not support.
        assert got.reshape(-1).view(torch.uint8).tolist() == want.reshape(-1).view(torch.uint8).tolist(), name


def read_header(path):
    data = pathlib.Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length]), len(data) - 8 - length


def shard_tensors(directory):
    """All tensors of a C++-written sharded checkpoint, read with the Python package."""
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = load_file(directory / shard)
        for name in part:
            assert index["weight_map"][name] == shard, name
        tensors.update(part)
    assert sorted(tensors) == sorted(index["weight_map"])
    return index, tensors


def test_python_file_loads_in_cpp_with_identical_values(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "in.safetensors", metadata={"format": "pt", "origin": "python"})
    st_copy(tmp_path / "in.safetensors", tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["model.safetensors"]
    assert_same(tensors, load_file(tmp_path / "out" / "model.safetensors"))
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt", "origin": "python"}


def test_python_file_without_metadata(tmp_path):
    tensors = {"w": torch.randn(3, 3)}
    save_file(tensors, tmp_path / "in.safetensors")
    st_copy(tmp_path / "in.safetensors", tmp_path / "out")
    _, header, _ = read_header(tmp_path / "out" / "model.safetensors")
    assert "__metadata__" not in header
    assert_same(tensors, load_file(tmp_path / "out" / "model.safetensors"))


def test_cpp_file_has_the_canonical_layout(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "in.safetensors", metadata={"format": "pt"})
    st_copy(tmp_path / "in.safetensors", tmp_path / "out")
    length, header, data_size = read_header(tmp_path / "out" / "model.safetensors")
    assert length % 8 == 0
    raw = (tmp_path / "out" / "model.safetensors").read_bytes()[8:8 + length].decode()
    assert raw.rstrip(" ") == json.dumps(header, sort_keys=True, separators=(",", ":"))
    names = sorted(k for k in header if k != "__metadata__")
    offset = 0
    for name in names:  # back to back, in name order
        begin, end = header[name]["data_offsets"]
        assert begin == offset, name
        offset = end
    assert offset == data_size


def test_cpp_sharded_output_loads_in_python(tmp_path):
    tensors = {f"model.layers.{i}.weight": torch.randn(64, 16).to(torch.bfloat16) for i in range(7)}
    tensors["lm_head.weight"] = torch.randn(100, 16)  # 6400 bytes: past the limit alone
    save_file(tensors, tmp_path / "in.safetensors", metadata={"format": "pt"})
    st_copy(tmp_path / "in.safetensors", tmp_path / "out", max_shard_bytes=5000)
    out = tmp_path / "out"
    files = sorted(os.listdir(out))
    # lm_head | layers 0-1 | 2-3 | 4-5 | 6  (2048 bytes each, at most 5000 per shard)
    assert files == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)] + [
        "model.safetensors.index.json"]
    index, loaded = shard_tensors(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["weight_map"]["lm_head.weight"] == "model-00001-of-00005.safetensors"
    assert_same(tensors, loaded)


def test_python_sharded_checkpoint_loads_in_cpp(tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    tensors = {f"layers.{i}.{kind}": torch.randn(32, 24, dtype=torch.float32).to(dtype)
               for i in range(4) for kind, dtype in [("a", torch.float32), ("b", torch.bfloat16)]}
    (tmp_path / "hf").mkdir()
    huggingface_hub.save_torch_state_dict(tensors, tmp_path / "hf", max_shard_size=5000)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    # The directory, and the index file itself, both open.
    st_copy(tmp_path / "hf", tmp_path / "single")
    assert_same(tensors, load_file(tmp_path / "single" / "model.safetensors"))
    st_copy(tmp_path / "hf" / "model.safetensors.index.json", tmp_path / "resharded", max_shard_bytes=7000)
    _, loaded = shard_tensors(tmp_path / "resharded")
    assert_same(tensors, loaded)


def test_transformers_checkpoint_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_experts=3, num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    expected = {}
    for shard in set(index["weight_map"].values()):
        expected.update(load_file(tmp_path / "hf" / shard))

    st_copy(tmp_path / "hf", tmp_path / "copy", max_shard_bytes=20_000)
    _, copied = shard_tensors(tmp_path / "copy")
    assert_same(expected, copied)
    # transformers itself loads what the engine wrote, with the same weights.
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "copy" / "config.json")
    reloaded = transformers.Qwen3MoeForCausalLM.from_pretrained(tmp_path / "copy", dtype=torch.bfloat16)
    original = {k: v for k, v in model.state_dict().items()}
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, original[name]), name


def test_copy_of_a_copy_is_byte_identical(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "in.safetensors", metadata={"format": "pt"})
    for limit in (None, 64):
        first, second = tmp_path / f"first{limit}", tmp_path / f"second{limit}"
        st_copy(tmp_path / "in.safetensors", first, max_shard_bytes=limit)
        st_copy(first, second, max_shard_bytes=limit)
        names = sorted(os.listdir(first))
        assert (len(names) > 1) == (limit is not None)
        assert sorted(os.listdir(second)) == names
        for name in names:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


def _python_file(tmp_path, header: dict, data: bytes, name="bad.safetensors"):
    text = json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize("case, fragment", [
    ("truncated", "truncated"),
    ("bad_json", "not valid JSON"),
    ("bad_dtype", 'unknown safetensors dtype "F12"'),
    ("bad_offsets", "needs 24"),
    ("short", "shorter than the 8-byte header length"),
])
def test_corrupt_file_fails_naming_file_and_tensor(tmp_path, case, fragment):
    good = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    if case == "truncated":
        save_file({"w": torch.randn(2, 3)}, tmp_path / "bad.safetensors")
        raw = (tmp_path / "bad.safetensors").read_bytes()
        (tmp_path / "bad.safetensors").write_bytes(raw[:-5])
        path = tmp_path / "bad.safetensors"
    elif case == "bad_json":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", 6) + b'{"w": ' + bytes(24))
    elif case == "bad_dtype":
        path = _python_file(tmp_path, {"w": dict(good["w"], dtype="F12")}, bytes(24))
    elif case == "bad_offsets":
        path = _python_file(tmp_path, {"w": dict(good["w"], data_offsets=[0, 20])}, bytes(24))
    else:
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"\x08\x00")
    proc = st_copy(path, tmp_path / "out", check=False)
    assert proc.returncode != 0
    assert str(path) in proc.stderr
    assert fragment in proc.stderr
    if case not in ("bad_json", "short"):
        assert '"w"' in proc.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_index_naming_a_missing_shard_fails(tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    tensors = {f"t{i}": torch.randn(40, 40) for i in range(3)}
    (tmp_path / "hf").mkdir()
    huggingface_hub.save_torch_state_dict(tensors, tmp_path / "hf", max_shard_size=7000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    victim = index["weight_map"]["t2"]
    (tmp_path / "hf" / victim).unlink()
    proc = st_copy(tmp_path / "hf", tmp_path / "out", check=False)
    assert proc.returncode != 0
    assert victim in proc.stderr and "model.safetensors.index.json" in proc.stderr
    assert '"t2"' in proc.stderr
