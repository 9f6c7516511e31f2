"""examples/pipeline: the Python pipeline step (ftd-client) and the same step over REST (curl
and jq) against a real coordinator. Submissions are idempotent across both (the same request id
and spec give the same job), exit codes tell the outcome, a rejected spec names its field; with
the engine built, a job on `ftd --local-worker` is followed to SUCCEEDED and its checkpoints."""
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from conftest import ROOT, binary, wait_for
from coordinator_util import USER, LocalCoordinator, make_tiny_job_assets

EXAMPLES = ROOT / "examples" / "pipeline"


def python_step(client_python, c, spec_file, request_id, *extra):
    env = {**os.environ, "FTD_ENDPOINT": c.endpoint, "FTD_TOKEN": USER, "FTD_CONFIG": os.devnull}
    return [client_python, EXAMPLES / "submit_and_wait.py", spec_file, "--request-id", request_id, *extra], env


def rest_step(c, spec_file, request_id):
    assert shutil.which("jq") and shutil.which("curl"), "scripts/setup.sh installs jq and curl"
    env = {**os.environ, "FTD_URL": c.url, "FTD_TOKEN": USER}
    return ["bash", EXAMPLES / "submit_and_wait.sh", spec_file, request_id], env


def start(cmd_env, log):
    cmd, env = cmd_env
    return subprocess.Popen([str(x) for x in cmd], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(proc, log_path, timeout=600):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, log_path.read_text()


def submitted_job(log_path):
    def job():
        for line in log_path.read_text().splitlines():
            if line.startswith("[ftd] job job-"):
                return line.split()[2]
    return wait_for("the step to print its job", job, timeout=60)


@pytest.fixture
def coordinator(tmp_path):
    if not binary("ftd").exists():
        pytest.skip(f"{binary('ftd')} is not built")
    c = LocalCoordinator(tmp_path).start()
    yield c
    c.stop()


def test_steps_follow_a_job_to_its_end_and_exit_by_outcome(client_python, coordinator, tmp_path):
    c = coordinator
    (c.models / "tiny").mkdir()
    (c.data / "train.jsonl").write_text('{"input_ids": [1, 2, 3]}\n')
    spec = {"baseModel": str(c.models / "tiny"), "datasets": {"train": str(c.data / "train.jsonl")},
            "hyperparameters": {"maxSteps": 4, "globalBatch": 1, "microBatch": 1, "seqLen": 16, "lr": 0.001},
            "resources": {"nodes": 1, "gpusPerNode": 1}}
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec))

    # The Python step waits on the QUEUED job (no worker here) until it is cancelled.
    log_path = tmp_path / "python-step.log"
    with open(log_path, "w") as log:
        proc = start(python_step(client_python, c, spec_file, "run-7", "--label", "team=nlp",
                                 "--output-json", tmp_path / "result.json"), log)
    job = submitted_job(log_path)
    assert c.call("POST", f"/v1/jobs/{job}:cancel", {"reason": "stopped by the test"})[0] == 200
    rc, out = finish(proc, log_path)
    assert rc == 1, out
    assert "[ftd] plan: world size 1" in out and f"[ftd] job {job} CANCELLED" in out, out
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["job_id"], result["state"], result["checkpoints"]) == (job, "CANCELLED", [])
    assert c.call("GET", f"/v1/jobs/{job}")[1]["labels"] == {"team": "nlp"}

    # The REST step with the same spec, labels aside, and request id: a different submission
    # (labels differ), refused with 409 -> exit 2; under a new id, its own job, cancelled too.
    cmd, env = rest_step(c, spec_file, "run-7")
    res = subprocess.run([str(x) for x in cmd], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "run-7 was already used" in res.stderr, (res.stdout, res.stderr)
    log_path = tmp_path / "rest-step.log"
    with open(log_path, "w") as log:
        proc = start(rest_step(c, spec_file, "run-8"), log)
    rest_job = submitted_job(log_path)
    assert rest_job != job
    assert c.call("POST", f"/v1/jobs/{rest_job}:cancel", {})[0] == 200
    rc, out = finish(proc, log_path)
    assert rc == 1 and f"[ftd] job {rest_job} CANCELLED" in out, out
    # A retried REST step finds its job (already ended) instead of submitting again.
    res = subprocess.run([str(x) for x in cmd[:-1]] + ["run-8"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and f"[ftd] job {rest_job} CANCELLED" in res.stdout, (res.stdout, res.stderr)

    # A rejected spec: exit 2, the field named.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**spec, "hyperparameters": {**spec["hyperparameters"], "lr": 5}}))
    for cmd, env in (python_step(client_python, c, bad, "run-9"), rest_step(c, bad, "run-9")):
        res = subprocess.run([str(x) for x in cmd], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, (cmd, res.stdout, res.stderr)
        assert "spec.hyperparameters.lr: must be a finite number in (0, 1], got 5" in res.stderr, res.stderr
    # No coordinator: exit 3.
    c.stop()
    for cmd, env in (python_step(client_python, c, spec_file, "run-10", "--retry-seconds", "1"),
                     rest_step(c, spec_file, "run-10")):
        env = {**env, "FTD_URL": "http://127.0.0.1:1", "FTD_ENDPOINT": "127.0.0.1:1"}
        res = subprocess.run([str(x) for x in cmd], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 3 and "127.0.0.1:1" in res.stderr, (cmd, res.stdout, res.stderr)


def test_steps_run_a_job_to_succeeded_on_a_local_worker(client_python, tmp_path, ftd_train):
    model, data = make_tiny_job_assets(tmp_path, ftd_train, docs=100, seed=9)
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps({
        "baseModel": str(model), "datasets": {"train": str(data)},
        "hyperparameters": {"maxSteps": 6, "globalBatch": 2, "microBatch": 1, "seqLen": 48, "lr": 0.003, "seed": 1},
        "resources": {"nodes": 1, "gpusPerNode": 1}, "checkpointing": {"everyNSteps": 3}}))
    c = LocalCoordinator(tmp_path, local_worker=True, engine=ftd_train, extra_args=["--local-worker-slots", "1"])
    c.start()
    try:
        cmd, env = python_step(client_python, c, spec_file, "nightly-2026-12-05", "--output-json", tmp_path / "r.json")
        res = subprocess.run([str(x) for x in cmd], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (res.stdout, res.stderr, c.log_tail())
        result = json.loads((tmp_path / "r.json").read_text())
        assert result["state"] == "SUCCEEDED" and [x["step"] for x in result["checkpoints"]] == [3, 6]
        final = pathlib.Path(result["final_checkpoint"])
        assert (final / "config.json").is_file() and list(final.glob("*.safetensors")), sorted(final.iterdir())
        assert "[ftd] loss " in res.stdout and "[ftd] checkpoint step 6" in res.stdout, res.stdout
        # The REST step with the same request id and spec: the same job, already done.
        cmd, env = rest_step(c, spec_file, "nightly-2026-12-05")
        res = subprocess.run([str(x) for x in cmd], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (res.stdout, res.stderr)
        assert f"[ftd] job {result['job_id']} SUCCEEDED" in res.stdout
        assert f"[ftd] checkpoint 6 {result['final_checkpoint']}" in res.stdout, res.stdout
    finally:
        c.stop()
