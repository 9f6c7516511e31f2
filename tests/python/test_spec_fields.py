"""The engine (ftd-train train) refuses, by field name, settings it has no implementation of,
instead of training without them: a spec that names them fails before any training with exit
code 2 (bad spec)."""
import json
import subprocess

import pytest


BASE = {"base_model": "/nonexistent/model", "datasets": {"train": "/nonexistent/train.jsonl"},
        "output": "/nonexistent/out", "hyperparameters": {"max_steps": 1, "global_batch": 1, "micro_batch": 1,
                                                          "seq_len": 8, "lr": 1e-4}}


def train(engine, tmp_path, **override):
    spec = json.loads(json.dumps(BASE))
    for dotted, value in override.items():
        node = spec
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return subprocess.run([str(engine), "train", "--spec", str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("field,value,message", [
    ("lora__rank", 8, "lora: only with method lora"),
    ("method", "qlora", 'method "qlora" is not one of full, lora'),
    ("backends__dispatcher", "fused", "backends.dispatcher: fused is not supported yet"),
    ("backends__attention", "xformers", 'backends.attention "xformers" is not one of sdpa, flash, cudnn'),
    ("backends__experts", "triton", 'backends.experts "triton" is not one of grouped_mm, ftd, loop'),
    ("parallelism__zero_stage", 4, "parallelism.zero_stage must be 0, 1, 2 or 3"),
    ("parallelism__zero_stage", 1, "parallelism.zero_stage 1 is not supported"),
])
def test_unimplemented_settings_are_refused_by_name(ftd_train, tmp_path, field, value, message):
    res = train(ftd_train, tmp_path, **{field: value})
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert message in res.stderr, res.stderr
    assert "step 1/" not in res.stdout  # nothing trained


def test_the_implemented_values_pass_the_spec_check(ftd_train, tmp_path):
    # Past the spec (which accepts them), the run fails on the missing model instead.
    for attention, experts in [("sdpa", "grouped_mm"), ("flash", "loop"), ("cudnn", "grouped_mm")]:
        res = train(ftd_train, tmp_path, method="full", backends__attention=attention, backends__experts=experts,
                    backends__dispatcher="alltoall", parallelism__zero_stage=2)
        assert res.returncode != 0
        assert "not supported" not in res.stderr and "is not one of" not in res.stderr, res.stderr
        line = res.stdout.splitlines()[0]
        assert line.startswith(f"backends: method full, attention {attention} ("), line
        assert f"experts {experts} (" in line and line.endswith("dispatcher alltoall, zero_stage 2, gate real"), line


def test_recompute_expert_grads_takes_the_experts_backend_it_runs_on(ftd_train, tmp_path):
    # Another backends.experts is refused by name; unset, it becomes ftd (the spec check passes and
    # the run fails on the missing model instead).
    spec = json.loads(json.dumps(BASE))
    spec["parallelism"] = {"recompute_expert_grads": True}
    spec["backends"] = {"experts": "grouped_mm"}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    run = lambda: subprocess.run([str(ftd_train), "train", "--spec", str(path)], capture_output=True, text=True,
                                 timeout=120)
    res = run()
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "parallelism.recompute_expert_grads needs backends.experts ftd" in res.stderr, res.stderr
    del spec["backends"]
    path.write_text(json.dumps(spec))
    res = run()
    assert res.returncode != 0
    assert "recompute_expert_grads" not in res.stderr, res.stderr
    assert "experts ftd (" in res.stdout.splitlines()[0], res.stdout
