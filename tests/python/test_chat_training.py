"""Training on chat data end to end through `ftd-train train`: a byte-level BPE tokenizer.json
built with the `tokenizers` library beside a tiny generated model, a JSONL file of
`{"messages": [...]}` records (datasets.format messages), ChatML rendering, loss on assistant
turns only, packing into seq_len rows. A bad record fails before training, naming its line."""
import json
import math
import os
import re
import subprocess

import pytest

from conftest import run, train_bpe_tokenizer

tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# FTD_TEST_DEVICE=cuda runs the same training on the GPU in bf16 (packed rows then attend through
# varlen attention); CI runs it on the CPU in fp32.
DEVICE = os.environ.get("FTD_TEST_DEVICE", "cpu")
DTYPE = "bf16" if DEVICE == "cuda" else "fp32"
QUESTIONS = ["What is two plus two?", "Name a colour.", "Say hello.", "Count to three.", "Which day follows Monday?"]
ANSWERS = ["Four.", "Blue.", "Hello!", "One, two, three.", "Tuesday."]


def chat_record(i):
    return {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": QUESTIONS[i % 5]},
                         {"role": "assistant", "content": ANSWERS[i % 5]}]}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, ftd_train):
    d = tmp_path_factory.mktemp("chat")
    model = d / "model"
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "4", "--out", model])
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    tok = train_bpe_tokenizer(QUESTIONS + ANSWERS + ["You are terse."] * 3, vocab - 8, SPECIALS)
    assert tok.get_vocab_size() <= vocab
    tok.save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"}))
    return d


def spec(d, name, data, **hp):
    s = {"base_model": str(d / "model"), "datasets": {"train": str(data), "format": "messages"},
         "output": str(d / name),
         "hyperparameters": {"max_steps": 8, "global_batch": 2, "micro_batch": 1, "seq_len": 96, "lr": 3e-3,
                             "warmup_steps": 1, "seed": 1, **hp},
         "device": DEVICE, "dtype": DTYPE}
    path = d / f"{name}.json"
    path.write_text(json.dumps(s))
    return path


def test_messages_dataset_trains_with_packing(chat_model, ftd_train):
    data = chat_model / "chat.jsonl"
    data.write_text("".join(json.dumps(chat_record(i)) + "\n" for i in range(40)))
    res = run([ftd_train, "train", "--spec", spec(chat_model, "out", data)])
    m = re.search(r"(\d+) documents packed into (\d+) rows of 96 tokens", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    docs, rows = int(m.group(1)), int(m.group(2))
    assert docs == 40 and 1 < rows < 40  # several conversations share a row
    losses = [float(x) for x in re.findall(r"step \d+/\d+ loss ([0-9.]+)", res.stdout)]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    # The same five conversations repeat: the loss on assistant tokens must fall.
    assert sum(losses[-2:]) / 2 < losses[0] - 0.1, losses
    assert (chat_model / "out" / "checkpoint-8" / "tokenizer.json").exists() or any(
        (p / "tokenizer.json").exists() for p in (chat_model / "out").glob("checkpoint-*"))


def test_bad_record_is_named_before_training(chat_model, ftd_train):
    data = chat_model / "bad.jsonl"
    lines = [json.dumps(chat_record(i)) for i in range(4)]
    lines[2] = json.dumps({"messages": [{"role": "wizard", "content": "hi"}]})
    data.write_text("\n".join(lines) + "\n")
    res = subprocess.run([str(ftd_train), "train", "--spec", str(spec(chat_model, "bad", data))],
                         capture_output=True, text=True)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "bad.jsonl:3:" in err and "wizard" in err, err
    assert "step 1/" not in res.stdout


def test_missing_tokenizer_is_a_clear_error(tmp_path, ftd_train):
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--out", tmp_path / "model"])
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(chat_record(0)) + "\n")
    res = subprocess.run([str(ftd_train), "train", "--spec", str(spec(tmp_path, "o", data))],
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert "tokenizer.json" in res.stdout + res.stderr
