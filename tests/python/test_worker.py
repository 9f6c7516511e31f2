"""Workers and scheduling end to end, on loopback with CPU ranks and the real binaries: the
coordinator `ftd`, `ftd-worker` agents (2 CPU slots each) and `ftd-train` ranks (Gloo).

Binaries: ftd and ftd-worker from $FTD_BUILD_DIR/bin; ftd-train from $FTD_TRAIN_BIN or the same
directory. Heartbeats are fast (0.2 s, lost after 2 s) so that failures show up quickly."""
import json
import os
import pathlib
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import binary, free_port, process_running, rendezvous_port_base, run, wait_for

ADMIN = "admintoken-0123456789"
USER = "usertoken-0123456789"
TENANT = "team"  # USER's tenant: its paths lie in <root>/team/


@pytest.fixture(scope="session")
def engine():
    p = pathlib.Path(os.environ.get("FTD_TRAIN_BIN", binary("ftd-train")))
    if not p.exists():
        pytest.skip(f"{p} is not built (set FTD_TRAIN_BIN or build the engine)")
    return p


@pytest.fixture(scope="session")
def service_bins():
    ftd, worker = binary("ftd"), binary("ftd-worker")
    for p in (ftd, worker):
        if not p.exists():
            pytest.skip(f"{p} is not built")
    return ftd, worker


@pytest.fixture(scope="module")
def assets(tmp_path_factory, engine):
    d = tmp_path_factory.mktemp("worker_assets")
    run([engine, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "3", "--out", d / "model"])
    import random
    rnd = random.Random(5)
    (d / TENANT).mkdir()  # the tenant's namespace of the data root
    with open(d / TENANT / "data.jsonl", "w") as f:
        for _ in range(200):
            f.write(json.dumps({"input_ids": [rnd.randrange(512) for _ in range(rnd.randrange(10, 40))]}) + "\n")
    return d


def job_spec(assets, out, steps, nodes=2, per_node=2, ep=2, every=2, priority=0, restarts=0, gb=8, gate="real"):
    return {"base_model": str(assets / "model"), "datasets": {"train": str(assets / TENANT / "data.jsonl")},
            "output": str(out),
            "hyperparameters": {"max_steps": steps, "global_batch": gb, "micro_batch": 1, "seq_len": 48,
                                "lr": 3e-3, "schedule": "cosine", "warmup_steps": 2, "seed": 7},
            "parallelism": {"ep_size": ep}, "backends": {"gate": gate}, "resources": {"nodes": nodes, "gpus_per_node": per_node},
            "checkpointing": {"every_n_steps": every},
            "scheduling": {"priority": priority, "max_restarts": restarts}}


class Cluster:
    """One coordinator on fixed loopback ports (it can be restarted on them) and its workers."""

    def __init__(self, root, service_bins, engine, assets):
        self.root, self.engine, self.assets = root, engine, assets
        self.ftd_bin, self.worker_bin = service_bins
        self.grpc, self.http = free_port(), free_port()
        self.rendezvous_base = rendezvous_port_base()  # kept across restarts, as an operator would
        (root / "tokens").write_text(f"{ADMIN} ops admin\n{USER} {TENANT} user\n")
        (root / "worker.token").write_text(ADMIN + "\n")
        self.ftd = None
        self.workers = {}
        self.logs = []

    def out(self, name):
        """An output directory in the tenant's namespace of the output root."""
        return self.root / TENANT / name

    def start_ftd(self, stop_grace=3):
        start_at = (self.root / "ftd.log").stat().st_size if (self.root / "ftd.log").exists() else 0
        log = open(self.root / "ftd.log", "a")
        self.logs.append(log)
        self.ftd = subprocess.Popen(
            [self.ftd_bin, "--data-dir", self.root / "data", "--tokens-file", self.root / "tokens",
             "--grpc-listen", f"127.0.0.1:{self.grpc}", "--http-listen", f"127.0.0.1:{self.http}",
             "--shared-model-root", self.assets, "--data-root", self.assets, "--output-root", self.root,
             "--heartbeat-interval", "0.2", "--heartbeat-timeout", "2", "--stop-grace", str(stop_grace),
             "--adopt-grace", "15", "--rendezvous-port-base", str(self.rendezvous_base)],
            stdout=log, stderr=log)

        def ready():
            assert self.ftd.poll() is None, (self.root / "ftd.log").read_text()
            return "ftd ready" in (self.root / "ftd.log").read_text()[start_at:]
        wait_for("ftd ready", ready, timeout=30)

    def start_worker(self, name, slots=2):
        log = open(self.root / f"{name}.log", "a")
        self.logs.append(log)
        self.workers[name] = subprocess.Popen(
            [self.worker_bin, "--coordinator", f"127.0.0.1:{self.grpc}", "--token-file",
             self.root / "worker.token", "--name", name, "--slots", str(slots), "--engine", self.engine,
             "--work-dir", self.root / f"work-{name}", "--address", "127.0.0.1", "--stop-grace", "3"],
            stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return self.workers[name]

    def stop_ftd(self):
        self.ftd.send_signal(signal.SIGTERM)
        self.ftd.wait(timeout=30)

    def stop(self):
        for p in list(self.workers.values()) + [self.ftd]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in list(self.workers.values()) + [self.ftd]:
            if p is not None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in self.logs:
            f.close()

    # REST
    def call(self, method, path, body=None, token=USER, raw=False):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = resp.read().decode()
            return data if raw else json.loads(data)

    def submit(self, spec):
        return self.call("POST", "/v1/jobs", {"spec": spec})["job"]["id"]

    def job(self, job_id):
        return self.call("GET", f"/v1/jobs/{job_id}")

    def step(self, job_id):
        return int(self.job(job_id)["status"].get("progress", {}).get("step", 0))

    def state(self, job_id):
        return self.job(job_id)["status"]["state"]

    def wait_state(self, job_id, *states, timeout=120):
        def check():
            j = self.job(job_id)
            if j["status"]["state"] in ("FAILED",) and "FAILED" not in states:
                raise AssertionError(f"job failed: {json.dumps(j['status'])}\n{self.diagnostics()}")
            return j if j["status"]["state"] in states else None
        return wait_for(f"{job_id} in {states}", check, timeout=timeout)

    def events(self, job_id):
        return self.call("GET", f"/v1/jobs/{job_id}/events?pageSize=1000")["events"]

    def logs_text(self, job_id):
        return self.call("GET", f"/v1/jobs/{job_id}/logs", raw=True)

    def rank_pids(self, job_id):
        """Live ftd-train processes of this job (their spec lies under the job's directory)."""
        pids = []
        for d in pathlib.Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if stat.split(")")[-1].split()[0] == "Z":
                continue
            if any(f"/jobs/{job_id}/".encode() in c for c in cmd) and b"train" in cmd:
                pids.append(int(d.name))
        return sorted(pids)

    def diagnostics(self):
        out = []
        for f in sorted(self.root.glob("*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-40:]))
        return "\n".join(out)


@pytest.fixture
def cluster(tmp_path, service_bins, engine, assets):
    c = Cluster(tmp_path, service_bins, engine, assets)
    c.start_ftd()
    yield c
    c.stop()


# The real router on long runs: with ep=2 on this data some ranks receive no rows at some steps,
# and must still take part in the backward all-to-all.
LONG_GATE = "real"

STEP_RE = re.compile(r"step (\d+)/(\d+) loss ([0-9.eE+-]+)")


def running_job(cluster, out, steps, every, min_step):
    """A 4-rank job on workers w1 and w2 (started here), once it has made `min_step` steps."""
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    job_id = cluster.submit(job_spec(cluster.assets, cluster.out(out), steps=steps, every=every, gate=LONG_GATE))
    cluster.wait_state(job_id, "RUNNING")
    wait_for(f"step {min_step}", lambda: cluster.step(job_id) >= min_step)
    return job_id


def step_losses(text):
    """step -> loss from rank 0's lines (a later attempt's line for the same step wins)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("[rank 0] "):
            m = STEP_RE.search(line)
            if m:
                out[int(m.group(1))] = float(m.group(3))
    return out


def test_four_rank_job_on_two_workers(cluster, engine):
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    out = cluster.out("out-4rank")
    job_id = cluster.submit(job_spec(cluster.assets, out, steps=6))
    followed = {}

    def follow():  # GET .../logs?follow=true streams until the job ends
        followed["text"] = cluster.call("GET", f"/v1/jobs/{job_id}/logs?follow=true", raw=True)
    follower = threading.Thread(target=follow)
    follower.start()
    job = cluster.wait_state(job_id, "SUCCEEDED")
    follower.join(timeout=30)
    assert not follower.is_alive(), "the followed log stream did not end with the job"
    assert "[rank 0] step 6/6" in followed["text"] and "[rank 2]" in followed["text"]
    assert len(cluster.call("GET", f"/v1/jobs/{job_id}/logs?tail=2", raw=True).splitlines()) == 2
    with pytest.raises(urllib.error.HTTPError) as e:
        cluster.call("GET", f"/v1/jobs/{job_id}/logs", token="not-a-token")
    assert e.value.code == 401
    st = job["status"]
    ranks = st["placement"]["ranks"]
    assert sorted((r.get("rank", 0), r["worker"], r.get("localRank", 0)) for r in ranks) == [
        (0, "w1", 0), (1, "w1", 1), (2, "w2", 0), (3, "w2", 1)]
    assert int(st["progress"]["step"]) == 6 and int(st["progress"]["totalSteps"]) == 6
    m = st["metrics"]
    assert m["worldSize"] == 4 and m["loss"] > 0 and m["stepSeconds"] > 0 and m["tokensPerSecondPerGpu"] > 0
    steps = [int(c["step"]) for c in st["checkpoints"]]
    assert steps[-1] == 6, st["checkpoints"]
    final = pathlib.Path(st["checkpoints"][-1]["path"])
    assert final == out / "checkpoint-6"
    # The output is an HF checkpoint the engine loads: per-expert keys, ep=2 shards.
    info = run([engine, "inspect", final])
    assert re.search(r"^experts\s+8$", info.stdout, re.M), info.stdout
    assert sorted(p.name for p in final.glob("model-*.safetensors")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    ids = cluster.root / "ids.json"
    ids.write_text(json.dumps([[1, 2, 3, 4, 5, 6, 7, 8]]))
    run([engine, "forward", "--model", final, "--input", ids, "--out", cluster.root / "logits.safetensors"])
    assert (cluster.root / "logits.safetensors").stat().st_size > 0
    msgs = [e["message"] for e in cluster.events(job_id) if "message" in e]
    assert any("final checkpoint" in s and str(final) in s for s in msgs), msgs
    logs = cluster.logs_text(job_id)
    assert "[rank 0] step 6/6" in logs and "[rank 3]" in logs, logs[-2000:]
    assert re.search(r"^\[rank 0\] backends: method full, attention sdpa \(.*\), experts grouped_mm \(.*\), "
                     r"dispatcher alltoall, zero_stage 2, gate real$", logs, re.M), logs[:3000]
    assert cluster.rank_pids(job_id) == []
    # Every metrics event names the step it describes: one per step, in order, each with its loss.
    samples = [e["metrics"] for e in cluster.events(job_id) if "metrics" in e]
    assert [int(m["step"]) for m in samples] == list(range(1, 7)), samples
    assert all(int(m["totalSteps"]) == 6 for m in samples)
    losses = step_losses(logs)
    assert all(abs(m["loss"] - losses[int(m["step"])]) < 1e-5 for m in samples), (samples, losses)


def test_two_three_slot_jobs_queue_by_priority(cluster):
    # Both need 3 of the cluster's 4 slots. Submitted before any worker exists: the later,
    # higher-priority job must run first; the other waits (QUEUED, nothing partially placed).
    low = cluster.submit(job_spec(cluster.assets, cluster.out("low"), steps=4, nodes=3, per_node=1, ep=1,
                                  every=4, priority=0, gb=6))
    high = cluster.submit(job_spec(cluster.assets, cluster.out("high"), steps=4, nodes=3, per_node=1, ep=1,
                                   every=4, priority=5, gb=6))
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.wait_state(high, "STARTING", "RUNNING", "SUCCEEDED")
    assert cluster.state(low) == "QUEUED"
    while True:  # low is never placed (not even partly) while high's ranks hold their slots
        low_state = cluster.state(low)  # read first: if it has moved on, high must be done
        high_job = cluster.job(high)
        if low_state != "QUEUED":
            # Slots free up as ranks exit: high has finished training (its last ranks may
            # still be exiting) or has ended.
            assert high_job["status"]["state"] == "SUCCEEDED" or \
                int(high_job["status"].get("progress", {}).get("step", 0)) == 4, (low_state, high_job["status"])
            break
        if high_job["status"]["state"] == "SUCCEEDED":
            break
        time.sleep(0.1)
    cluster.wait_state(low, "SUCCEEDED")

    def started_at(job_id):
        return min(e["time"] for e in cluster.events(job_id) if e.get("status", {}).get("state") == "STARTING")

    assert started_at(high) < started_at(low)
    assert cluster.job(high)["status"].get("attempt", 0) == 0 and cluster.job(low)["status"].get("attempt", 0) == 0


def test_sigkill_worker_resumes_from_checkpoint(cluster, engine):
    steps, every = 40, 4
    cluster.start_worker("w1")
    victim = cluster.start_worker("w2")
    out = cluster.out("out-kill")
    spec = job_spec(cluster.assets, out, steps=steps, every=every, restarts=2, gate=LONG_GATE)
    job_id = cluster.submit(spec)
    wait_for("a checkpoint at step >= 8",
             lambda: any(int(c["step"]) >= 8 for c in cluster.job(job_id)["status"].get("checkpoints", [])))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # The attempt fails (lost worker) and the gang is torn down; with 2 of 4 slots left the job waits.
    job = cluster.wait_state(job_id, "QUEUED", timeout=60)
    assert job["status"]["attempt"] == 1
    wait_for("the surviving ranks to be stopped", lambda: cluster.rank_pids(job_id) == [], timeout=30)
    msgs = " ".join(e.get("message", "") for e in cluster.events(job_id))
    # The cause is the lost worker, even when w1's ranks noticed their dead peers first.
    assert "WORKER_LOST: attempt 0: worker w2 missed heartbeats" in msgs, msgs
    assert "requeued to resume (restart 1 of 2)" in msgs, msgs
    time.sleep(1.0)
    assert cluster.state(job_id) == "QUEUED"
    cluster.start_worker("w2")  # capacity returns
    job = cluster.wait_state(job_id, "SUCCEEDED", timeout=180)
    assert int(job["status"]["progress"]["step"]) == steps
    assert job["status"]["attempt"] == 1
    msgs = " ".join(e.get("message", "") for e in cluster.events(job_id))
    assert "resuming from the last checkpoint" in msgs
    # Loss continuity: every step's loss equals an uninterrupted run's.
    got = step_losses(cluster.logs_text(job_id))
    ref_spec = dict(spec, output=str(cluster.root / "out-ref"))
    ref_spec.update(device="cpu", dtype="fp32", precision="fp32_master")
    (cluster.root / "ref.json").write_text(json.dumps(ref_spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    ref = run([engine, "launch", "--nproc", "4", "--", "train", "--spec", cluster.root / "ref.json"],
              env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    want = step_losses(ref.stdout)
    assert sorted(want) == list(range(1, steps + 1)), ref.stdout[-2000:]
    assert sorted(got) == list(range(1, steps + 1)), got
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= 1e-4, f"resumed {got}\nuninterrupted {want}"


def test_cancel_stops_every_rank_within_10s(cluster):
    job_id = running_job(cluster, "out-cancel", steps=2000, every=1000, min_step=1)
    pids = cluster.rank_pids(job_id)
    assert len(pids) == 4, pids
    t0 = time.monotonic()
    cluster.call("POST", f"/v1/jobs/{job_id}:cancel", {"reason": "test"})
    wait_for("every rank to exit", lambda: not any(process_running(p) for p in pids), timeout=10)
    gone = time.monotonic() - t0
    cluster.wait_state(job_id, "CANCELLED", timeout=30)
    print(f"cancel: all 4 ranks gone {gone:.2f}s after the request")
    assert gone < 10


def test_coordinator_restart_adopts_running_job(cluster):
    # Long enough that the ranks are still training a second after the coordinator died.
    steps = 300
    job_id = running_job(cluster, "out-restart", steps=steps, every=100, min_step=2)
    pids = cluster.rank_pids(job_id)
    assert len(pids) == 4
    cluster.ftd.send_signal(signal.SIGKILL)
    cluster.ftd.wait()
    time.sleep(1.0)
    assert cluster.rank_pids(job_id) == pids  # the ranks keep running without a coordinator
    cluster.start_ftd()
    job = cluster.wait_state(job_id, "SUCCEEDED", timeout=180)
    assert job["status"].get("attempt", 0) == 0  # adopted, not restarted
    assert int(job["status"]["progress"]["step"]) == steps
    msgs = " ".join(e.get("message", "") for e in cluster.events(job_id))
    assert "adopted" in msgs, msgs


def test_deadline_stops_the_ranks_with_a_checkpoint_and_fails_the_job(cluster):
    # A long job with a runtime limit: stopped mid-run at a step boundary, where the ranks save
    # a checkpoint; FAILED with DEADLINE_EXCEEDED and not restarted, despite max_restarts. The
    # coordinator gives the ranks time to save (stop grace 60 s) before it would kill them.
    cluster.stop_ftd()
    cluster.start_ftd(stop_grace=60)
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    spec = job_spec(cluster.assets, cluster.out("out-deadline"), steps=5000, every=1000, restarts=3, gate=LONG_GATE)
    spec["scheduling"]["max_runtime_seconds"] = 30
    job_id = cluster.submit(spec)
    cluster.wait_state(job_id, "RUNNING")
    job = cluster.wait_state(job_id, "FAILED", timeout=120)
    st = job["status"]
    assert st["error"]["code"] == "DEADLINE_EXCEEDED", st
    assert not st["error"].get("retryable", False)
    assert st.get("attempt", 0) == 0, "not restarted"
    step = int(st["progress"]["step"])
    assert 0 < step < 5000, st["progress"]
    ckpts = st.get("checkpoints", [])
    assert ckpts and int(ckpts[-1]["step"]) == step, (ckpts, step)
    assert (cluster.out("out-deadline") / f"checkpoint-{step}" / "training_state").is_dir()
    assert f"last checkpoint {ckpts[-1]['path']}" in st["error"]["message"], st["error"]
    # The ranks are gone.
    assert cluster.rank_pids(job_id) == []
    logs = cluster.logs_text(job_id)
    assert f"stopping at step {step} (SIGTERM)" in logs, logs[-2000:]


def test_ranks_that_finish_while_the_coordinator_is_down_keep_their_progress(cluster):
    # The ranks train to the end while no coordinator runs; the workers then register again
    # with exited ranks (a register carries no reports) and deliver the steps afterwards. The
    # job must end with the last step's progress, not with what the old coordinator saw.
    steps = 12
    job_id = running_job(cluster, "out-offline", steps=steps, every=6, min_step=1)
    seen = cluster.step(job_id)
    cluster.ftd.send_signal(signal.SIGKILL)
    cluster.ftd.wait()
    wait_for("the ranks to finish without a coordinator", lambda: cluster.rank_pids(job_id) == [], timeout=180)
    assert seen < steps
    cluster.start_ftd()
    job = cluster.wait_state(job_id, "SUCCEEDED", timeout=120)
    assert job["status"].get("attempt", 0) == 0
    assert int(job["status"]["progress"]["step"]) == steps, job["status"]["progress"]
    assert int(job["status"]["metrics"]["step"]) == steps
    assert int(job["status"]["checkpoints"][-1]["step"]) == steps
    samples = [int(e["metrics"]["step"]) for e in cluster.events(job_id) if "metrics" in e]
    assert samples[-1] == steps and samples == sorted(samples), samples
