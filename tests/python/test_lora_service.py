"""A LoRA job through the service: submitted over REST to `ftd --local-worker` (CPU), validated
(errors name the spec.lora field), planned (the frozen base's memory), trained, its checkpoints
listed as adapters (PEFT adapter directories), and `ftctl get` / `ftctl checkpoints` showing the
method and the kind."""
import json
import os
import subprocess

from conftest import binary, wait_for
from coordinator_util import USER, LocalCoordinator, make_tiny_job_assets


def ftctl(c, *args):
    env = {**os.environ, "FTD_ENDPOINT": c.endpoint, "FTD_TOKEN": USER}
    res = subprocess.run([str(binary("ftctl")), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def test_lora_job_through_the_service(tmp_path, ftd_train):
    model, data = make_tiny_job_assets(tmp_path, ftd_train, docs=40)
    c = LocalCoordinator(tmp_path, local_worker=True, engine=ftd_train, extra_args=["--local-worker-slots", "1"])
    c.start()
    try:
        spec = {"base_model": str(model), "datasets": {"train": str(data)}, "method": "lora",
                "lora": {"rank": 4, "targets": ["attention", "experts"], "merge": True},
                "hyperparameters": {"max_steps": 4, "global_batch": 2, "micro_batch": 1, "seq_len": 48,
                                    "lr": 1e-2, "seed": 7},
                "resources": {"nodes": 1, "gpus_per_node": 1}, "checkpointing": {"every_n_steps": 2}}
        # Bad fields are named, nothing is stored.
        for bad, field in [({"dropout": 0.1}, "spec.lora.dropout"), ({"targets": ["router"]}, "spec.lora.targets"),
                           ({"targets": ["shared_experts"]}, "spec.lora.targets: shared_experts matches nothing")]:
            status, body = c.call("POST", "/v1/jobs", {"spec": {**spec, "lora": {**spec["lora"], **bad}}})
            assert status == 400 and field in json.dumps(body), (status, body)
        status, body = c.call("POST", "/v1/jobs", {"spec": {**spec, "method": "full"}})
        assert status == 400 and "spec.lora: only with spec.method lora" in json.dumps(body), body
        status, body = c.call("GET", "/v1/jobs")
        assert status == 200 and not body.get("jobs"), body

        status, plan = c.call("POST", "/v1/jobs", {"spec": spec, "validateOnly": True})
        assert status == 200, plan
        notes = " ".join(plan["plan"]["notes"])
        assert "method lora" in notes and "trainable adapter parameters" in notes, notes
        assert "spec.lora.alpha defaulted to 8 (2 x rank)" in notes, notes

        status, created = c.call("POST", "/v1/jobs", {"spec": spec})
        assert status == 200, created
        job_id = created["job"]["id"]

        def done():
            s, job = c.call("GET", f"/v1/jobs/{job_id}")
            state = job["status"]["state"]
            assert state not in ("FAILED", "CANCELLED"), (job, c.log_tail())
            return job if state == "SUCCEEDED" else None
        job = wait_for("the LoRA job to succeed", done, timeout=600)
        assert job["spec"]["lora"]["alpha"] == 8 and job["spec"]["lora"]["rank"] == 4
        status, ckpts = c.call("GET", f"/v1/jobs/{job_id}/checkpoints")
        assert [k["step"] for k in ckpts["checkpoints"]] == ["2", "4"], ckpts
        for k in ckpts["checkpoints"]:
            assert k["kind"] == "adapter", k
            assert os.path.exists(os.path.join(k["path"], "adapter_config.json")), k
            assert not os.path.exists(os.path.join(k["path"], "model.safetensors")), k
        out_dir = os.path.dirname(ckpts["checkpoints"][-1]["path"])
        assert os.path.exists(os.path.join(out_dir, "merged", "config.json"))  # merge: true

        shown = ftctl(c, "get", job_id)
        assert "Method:" in shown and "lora (rank 4, alpha 8, targets attention, experts, merge)" in shown, shown
        assert "2 LoRA adapters" in shown, shown
        listed = ftctl(c, "checkpoints", job_id)
        assert "KIND" in listed and listed.count("adapter") == 2, listed
    finally:
        c.stop()
