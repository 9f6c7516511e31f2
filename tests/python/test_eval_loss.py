"""Eval loss on datasets.validation every N steps (hyperparameters.eval_every): logged and written
to the metrics file; the same value from 4 ranks with expert parallelism as from one process (every
validation row counted once, ranks short of rows still join the exchanges); it equals HF
Transformers' loss on the same rows for the untrained checkpoint; errors name the fields."""
import json
import re
import subprocess

import pytest
import torch

from conftest import clean_env, run

STEPS = 4
EVAL_RE = re.compile(r"eval step (\d+)/(\d+) loss ([0-9.eE+-]+) targets (\d+)")


@pytest.fixture(scope="module")
def work(tmp_path_factory, ftd_train):
    d = tmp_path_factory.mktemp("eval")
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "2", "--out", d / "model"])
    g = torch.Generator().manual_seed(3)
    for name, n in (("train", 32), ("valid", 7)):  # 7 rows: not a multiple of 4 ranks x micro 1
        with open(d / f"{name}.jsonl", "w") as f:
            for _ in range(n):
                k = int(torch.randint(12, 30, (1,), generator=g))
                f.write(json.dumps({"input_ids": torch.randint(0, 512, (k,), generator=g).tolist()}) + "\n")
    return d


def spec(d, name, ep=1, eval_every=2, validation=True, max_steps=STEPS):
    s = {"base_model": str(d / "model"),
         "datasets": {"train": str(d / "train.jsonl"), **({"validation": str(d / "valid.jsonl")} if validation else {})},
         "output": str(d / name),
         "hyperparameters": {"max_steps": max_steps, "global_batch": 8, "micro_batch": 1, "seq_len": 32, "lr": 1e-3,
                             "seed": 5, "adam_eps": 1e-6, "eval_every": eval_every},
         "parallelism": {"ep_size": ep}, "device": "cpu", "dtype": "fp32"}
    p = d / f"{name}.json"
    p.write_text(json.dumps(s))
    return p


def evals(text):
    return [(int(m.group(1)), float(m.group(3)), int(m.group(4))) for m in EVAL_RE.finditer(text)]


@pytest.fixture(scope="module")
def single(work, ftd_train):
    res = run([ftd_train, "train", "--spec", spec(work, "single"), "--metrics-out", work / "single.metrics"],
              env=clean_env())
    return res.stdout + res.stderr


def test_eval_every_n_steps_logged_and_in_metrics(work, single):
    e = evals(single)
    assert [s for s, _, _ in e] == [2, 4], single
    assert all(loss > 0 for _, loss, _ in e)
    # Every validation target counted: 7 rows, each of length k contributes k - 1 targets.
    rows = [json.loads(line)["input_ids"] for line in (work / "valid.jsonl").read_text().splitlines()]
    assert all(t == sum(len(r) - 1 for r in rows) for _, _, t in e)
    events = [json.loads(line) for line in (work / "single.metrics").read_text().splitlines()]
    ev = [x for x in events if x["event"] == "eval"]
    assert [x["step"] for x in ev] == [2, 4]
    assert ev[0]["loss"] == pytest.approx(e[0][1], rel=1e-6)


def test_distributed_eval_equals_single_process(work, ftd_train, single):
    res = run([ftd_train, "launch", "--nproc", "4", "--", "train", "--spec", spec(work, "ep2", ep=2)],
              env=clean_env(), timeout=600)
    dist = evals(res.stdout + res.stderr)
    ref = evals(single)
    assert [s for s, _, _ in dist] == [s for s, _, _ in ref]
    for (_, a, ta), (_, b, tb) in zip(dist, ref):
        assert ta == tb
        assert a == pytest.approx(b, abs=1e-5)


def test_untrained_eval_loss_equals_hf(work, ftd_train):
    transformers = pytest.importorskip("transformers")
    # max_steps 1 with lr ~0 would still move weights; instead evaluate the checkpoint HF loads:
    # train 1 step, then compare ftd's eval at step 1 with HF on the saved checkpoint-1.
    res = run([ftd_train, "train", "--spec", spec(work, "one", eval_every=1, max_steps=1)], env=clean_env())
    (_, loss, targets), = evals(res.stdout + res.stderr)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(work / "one" / "checkpoint-1"),
                                                              torch_dtype=torch.float32)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for line in (work / "valid.jsonl").read_text().splitlines():
            ids = torch.tensor([json.loads(line)["input_ids"]])
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total += float(out.loss) * n
            count += n
    assert targets == count
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_eval_every_without_validation_is_named(work, ftd_train):
    res = subprocess.run([str(ftd_train), "train", "--spec", str(spec(work, "noval", validation=False))],
                         capture_output=True, text=True, env=clean_env())
    assert res.returncode == 2
    assert "hyperparameters.eval_every" in res.stdout + res.stderr and "datasets.validation" in res.stdout + res.stderr
