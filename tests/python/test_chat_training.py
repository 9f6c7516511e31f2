"""Training on chat data end to end through `ftd-train train`: a byte-level BPE tokenizer.json
built with the `tokenizers` library beside a tiny generated model, a JSONL file of
`{"messages": [...]}` records (datasets.format messages), ChatML rendering, loss on assistant
turns only, packing into seq_len rows. A bad record fails before training, naming its line."""
import json
import math
import os
import pathlib
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


# Training with a real model's chat template (Qwen3's, as Qwen3-MoE ships it): tool calls, tool
# results and reasoning go through the template, the loss mask comes from it.
QWEN3_TEMPLATE = pathlib.Path(__file__).resolve().parents[1] / "data" / "chat_templates" / "Qwen-Qwen3-0.6B.jinja"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


def qwen3_record(i):
    q, a = QUESTIONS[i % 5], ANSWERS[i % 5]
    if i % 3 == 0:
        return {"tools": [WEATHER], "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."}]}
    return {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a, "reasoning_content": "Easy."}]}


@pytest.fixture(scope="module")
def qwen3_model(tmp_path_factory, ftd_train):
    d = tmp_path_factory.mktemp("qwen3chat")
    model = d / "model"
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "5", "--out", model])
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    corpus = QUESTIONS + ANSWERS + ["<think>\nEasy.\n</think>", "<tool_call>", "get_weather Paris sunny"] * 3
    tok = train_bpe_tokenizer(corpus, vocab - 8, SPECIALS)
    tok.save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    (model / "chat_template.jinja").write_text(QWEN3_TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    return d


def test_real_chat_template_trains_with_its_loss_mask(qwen3_model, ftd_train):
    transformers = pytest.importorskip("transformers")
    data = qwen3_model / "chat.jsonl"
    records = [qwen3_record(i) for i in range(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = run([ftd_train, "train", "--spec", spec(qwen3_model, "out", data)])
    log = res.stdout + res.stderr
    assert "chat records: the model's chat template (loss on assistant turns, found by rendering prefixes)" in log, log
    losses = [float(x) for x in re.findall(r"step \d+/\d+ loss ([0-9.]+)", res.stdout)]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < losses[0] - 0.1, losses

    # What training saw, through `ftd-train chat-template --ids`: transformers' text and ids, and
    # loss on the assistant turns only (the tool call included, the tool result not).
    inp = qwen3_model / "two.jsonl"
    inp.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1]) + "\n")
    out = qwen3_model / "two.out.jsonl"
    run([ftd_train, "chat-template", "--tokenizer", qwen3_model / "model", "--input", inp, "--out", out, "--ids"])
    rendered = [json.loads(line) for line in out.read_text().splitlines()]
    hf = transformers.AutoTokenizer.from_pretrained(str(qwen3_model / "model"))
    # Ids from tokenizer.json itself (transformers 5 swaps in its own Qwen pre-tokenizer for a
    # qwen model directory; real Qwen tokenizer.json files already hold that one).
    tok = tokenizers.Tokenizer.from_file(str(qwen3_model / "model" / "tokenizer.json"))
    tok.decode = lambda ids, _decode=tok.decode: _decode(ids, skip_special_tokens=False)
    for record, r in zip(records[:2], rendered):
        assert r["text"] == hf.apply_chat_template(record["messages"], tools=record.get("tools"), tokenize=False)
        assert r["input_ids"] == tok.encode(r["text"], add_special_tokens=False).ids
        trained = tok.decode([i for i, m in zip(r["input_ids"], r["assistant_masks"]) if m])
        assert "sunny" not in trained and "Weather in Paris?" not in trained and "You are terse." not in trained
    assert tok.decode([i for i, m in zip(rendered[0]["input_ids"], rendered[0]["assistant_masks"]) if m]) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        "<think>\n\n</think>\n\nSunny.<|im_end|>")
    assert tok.decode([i for i, m in zip(rendered[1]["input_ids"], rendered[1]["assistant_masks"]) if m]) == (
        "<think>\nEasy.\n</think>\n\nBlue.<|im_end|>")


def test_broken_chat_template_is_named_before_training(qwen3_model, ftd_train, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for f in (qwen3_model / "model").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model / "chat_template.jinja").write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(qwen3_record(1)) + "\n")
    s = json.loads(spec(qwen3_model, "broken", data).read_text())
    s["base_model"] = str(model)
    (tmp_path / "s.json").write_text(json.dumps(s))
    res = subprocess.run([str(ftd_train), "train", "--spec", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "chat template line 2, column" in err, err
    assert "step 1/" not in res.stdout
