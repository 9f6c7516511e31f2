"""Streamed training data through `ftd-train train` (engine/train/training_data.h): records are
tokenized and packed while training runs, by a background thread, and the run is the one the
same rows give pre-tokenized; resuming mid-epoch continues the exact order, also with 2 ranks;
datasets.validation_fraction holds out documents chosen by the seed, never trained on, and
evaluates them exactly as datasets.validation with the same documents in a file does."""
import json
import re
import subprocess

import pytest

from conftest import clean_env, run, train_bpe_tokenizer

tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "seven", "blue", "quiet"]
STEP_RE = re.compile(r"^(?:\[rank 0\] )?step (\d+)/(\d+) loss ([0-9.eE+-]+) .* data_wait ([0-9.]+)s$", re.M)
EVAL_RE = re.compile(r"eval step (\d+)/\d+ loss ([0-9.eE+-]+) targets (\d+)")
PACKED_RE = re.compile(r"(\d+) documents packed into (\d+) rows of (\d+) tokens")
N_DOCS = 36


def text(i):
    # Lengths from a few tokens to more than a row: packing, truncation and several rows.
    return f"doc {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(2 + (i * 5) % 23))


@pytest.fixture(scope="module")
def work(tmp_path_factory, ftd_train):
    d = tmp_path_factory.mktemp("stream")
    model = d / "model"
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "6", "--out", model])
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    tok = train_bpe_tokenizer([text(i) for i in range(N_DOCS)], vocab - 8, SPECIALS)
    tok.save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    texts = [text(i) for i in range(N_DOCS)]
    (d / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    # The same documents tokenized here (text + EOS, loss everywhere), as token-id records.
    eos = tok.token_to_id("<|im_end|>")
    ids = [tok.encode(t).ids + [eos] for t in texts]
    (d / "ids.jsonl").write_text("".join(json.dumps({"input_ids": x}) + "\n" for x in ids))
    return d


def write_spec(d, name, data, fmt, steps=8, validation=None, fraction=None, eval_every=0):
    datasets = {"train": str(data), "format": fmt}
    if validation:
        datasets["validation"] = str(validation)
    if fraction:
        datasets["validation_fraction"] = fraction
    s = {"base_model": str(d / "model"), "datasets": datasets, "output": str(d / name),
         "hyperparameters": {"max_steps": steps, "global_batch": 4, "micro_batch": 1, "seq_len": 64, "lr": 3e-3,
                             "warmup_steps": 1, "seed": 3, "adam_eps": 1e-6, "eval_every": eval_every},
         "device": "cpu", "dtype": "fp32"}
    p = d / f"{name}.json"
    p.write_text(json.dumps(s))
    return p


def train(ftd_train, spec, *extra, nproc=1):
    cmd = [ftd_train, "train", "--spec", spec, *extra]
    if nproc > 1:
        cmd = [ftd_train, "launch", "--nproc", nproc, "--", "train", "--spec", spec, *extra]
    res = run(cmd, env=clean_env(), timeout=300)
    return res.stdout + res.stderr


def losses(out):
    return [float(m.group(3)) for m in STEP_RE.finditer(out)]


@pytest.fixture(scope="module")
def reference(work, ftd_train):
    """Text records streamed: 8 steps of 4 rows, one process."""
    return train(ftd_train, write_spec(work, "text", work / "text.jsonl", "text"))


def test_streamed_text_trains_as_its_pretokenized_rows(work, ftd_train, reference):
    out = reference
    m = PACKED_RE.search(out)
    assert m and int(m.group(1)) == N_DOCS, out
    rows = int(m.group(2))
    assert 8 * 4 > rows > 4  # the 8 steps go through more than one epoch of rows
    assert "tokenized and packed during training by a background thread" in out
    steps = STEP_RE.findall(out)
    assert [int(s[0]) for s in steps] == list(range(1, 9)), out
    assert all(float(s[3]) >= 0 for s in steps)  # data_wait on every step line
    assert re.search(r"^data: producer waited [0-9.]+ s .*trainer waited [0-9.]+ s .*over 32 rows$", out, re.M), out
    pre = train(ftd_train, write_spec(work, "ids", work / "ids.jsonl", "auto"))
    assert PACKED_RE.search(pre).groups() == m.groups()
    # The same rows in the same order: the printed losses are identical, not merely close.
    assert losses(pre) == losses(out) and len(losses(out)) == 8


def test_resume_mid_epoch_continues_the_exact_order(work, ftd_train, reference):
    spec = write_spec(work, "split", work / "text.jsonl", "text")
    first = train(ftd_train, spec, "--stop-after", "3")
    second = train(ftd_train, spec, "--resume")
    assert "resumed from" in second and "checkpoint-3" in second
    assert losses(first) + losses(second) == losses(reference)


def test_two_ranks_split_and_resumed_equal_one_process(work, ftd_train, reference):
    spec = write_spec(work, "ranks2", work / "text.jsonl", "text")
    first = train(ftd_train, spec, "--stop-after", "5", nproc=2)
    second = train(ftd_train, spec, "--resume", nproc=2)
    assert "resumed from" in second
    ours, ref = losses(first) + losses(second), losses(reference)
    assert len(ours) == 8
    # Each rank packs only its own rows; together they are the global batch of one process.
    assert max(abs(a - b) for a, b in zip(ours, ref)) <= 1e-5, (ours, ref)


# engine/data/epoch_order.cc in Python: SplitMix64 and Fisher-Yates, platform-independent.
M64 = (1 << 64) - 1


def epoch_order(n, seed, epoch):
    order = list(range(n))
    state = (seed ^ ((0xD1B54A32D192ED03 * (epoch + 1)) & M64)) & M64

    def next_value():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = M64 - M64 % bound
        while True:
            v = next_value()
            if v < limit:
                break
        j = v % bound
        order[i], order[j] = order[j], order[i]
    return order


def held_out(n, fraction, seed):
    count = min(max(int(fraction * n + 0.5), 1), n - 1)
    return sorted(epoch_order(n, seed ^ 0x686F6C646F7574, 0)[:count])


def test_holdout_split_is_the_explicit_split_by_seed(work, ftd_train):
    assert epoch_order(10, 42, 0) == [7, 5, 8, 0, 9, 6, 2, 1, 4, 3]  # the C++ order (packing_test pins it)
    fraction = 0.2
    held = held_out(N_DOCS, fraction, 3)
    assert len(held) == 7
    lines = (work / "text.jsonl").read_text().splitlines()
    (work / "train_part.jsonl").write_text("".join(lines[i] + "\n" for i in range(N_DOCS) if i not in held))
    (work / "held_part.jsonl").write_text("".join(lines[i] + "\n" for i in held))
    holdout = train(ftd_train, write_spec(work, "holdout", work / "text.jsonl", "text", steps=4, fraction=fraction,
                                          eval_every=2))
    explicit = train(ftd_train, write_spec(work, "explicit", work / "train_part.jsonl", "text", steps=4,
                                           validation=work / "held_part.jsonl", eval_every=2))
    assert f"{len(held)} documents held out of" in holdout, holdout
    assert int(PACKED_RE.search(holdout).group(1)) == N_DOCS - len(held)
    # Training never saw a held-out document (its rows are those of the file without them), and
    # evaluation read exactly the held-out ones: the runs are the same, number for number.
    assert losses(holdout) == losses(explicit) and len(losses(holdout)) == 4
    evals = EVAL_RE.findall(holdout)
    assert [int(s) for s, _, _ in evals] == [2, 4]
    assert evals == EVAL_RE.findall(explicit)
    # Every held-out target: text + EOS, loss on every token after the first (rows of 64 tokens).
    ids = [json.loads(line)["input_ids"] for line in (work / "ids.jsonl").read_text().splitlines()]
    assert int(evals[0][2]) == sum(min(len(ids[i]), 64) - 1 for i in held)


@pytest.mark.parametrize("datasets,field", [
    ({"validation_fraction": 1.5}, "datasets.validation_fraction"),
    ({"validation_fraction": 0.1, "validation": "v.jsonl"}, "datasets.validation_fraction"),
])
def test_bad_holdout_fields_are_named(work, ftd_train, datasets, field):
    s = {"base_model": str(work / "model"), "datasets": {"train": str(work / "text.jsonl"), "format": "text", **datasets},
         "output": str(work / "bad"), "hyperparameters": {"max_steps": 1}, "device": "cpu"}
    p = work / "bad.json"
    p.write_text(json.dumps(s))
    res = subprocess.run([str(ftd_train), "train", "--spec", str(p)], capture_output=True, text=True, env=clean_env())
    assert res.returncode == 2, res.stdout + res.stderr
    assert field in res.stdout + res.stderr
