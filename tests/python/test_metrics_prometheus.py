"""/metrics end to end with a real job: the coordinator `ftd --local-worker` runs a small
CPU fine-tune (ftd-worker child, ftd-train rank), and
- `promtool check metrics` accepts a live scrape that holds the job's samples;
- Debian's Prometheus server, on loopback and scraping every second, returns the job's
  tokens-per-second and loss series through its HTTP API (non-empty, plausible values);
- every metric the Grafana dashboard's PromQL names is exported by this coordinator (names
  from the live scrape), apart from an explicit list of Prometheus' and DCGM's own series;
- the job has a validation set (datasets.validation, eval_every): its eval loss, as the engine
  logged it, reaches GetJob over REST (status.metrics.evalLoss/evalStep), the job's events
  (REST list and SSE `event: eval`) and /metrics (ftd_job_eval_loss, ftd_job_eval_step).

Binaries: ftd from $FTD_BUILD_DIR/bin; ftd-train from $FTD_TRAIN_BIN or the same directory;
promtool and prometheus from Debian's prometheus package (scripts/setup.sh)."""
import json
import math
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import binary, free_port, rendezvous_port_base, run, wait_for

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from metrics_util import dashboard_exprs, family_names, find, parse_exposition, promql_metric_names  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "metrics-user-token-0123456789"
ADMIN = "metrics-admin-token-0123456789"
# Series the dashboard reads that other exporters produce: Prometheus itself (per scrape
# target) and NVIDIA's dcgm-exporter (GPU telemetry, joined on pod/gpu).
EXTERNAL = {"up", "scrape_duration_seconds", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK"}
EVAL_EVERY = 3
# rank 0's log line of an evaluation (engine/train/trainer.cc), as the coordinator buffers it.
EVAL_LOG = re.compile(r"\[rank 0\] eval step (\d+)/\d+ loss ([0-9.eE+-]+) targets (\d+)")


def http(url, method="GET", body=None, token=None, timeout=30):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def tool(name):
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/setup.sh installs Debian's prometheus package"
    return path


class Coordinator:
    def __init__(self, root, engine):
        self.root = root
        self.http_port, self.grpc_port = free_port(), free_port()
        # The admin token is what the local worker presents to the coordinator.
        (root / "tokens").write_text(f"{TOKEN} team-metrics user\n{ADMIN} ops admin\n")
        # The tenant's namespaces of the data and output roots; the model in the shared root.
        self.data = root / "datasets" / "team-metrics"
        self.data.mkdir(parents=True)
        self.out = root / "outputs" / "team-metrics" / "out"
        run([engine, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "3", "--out",
             root / "models" / "tiny-moe"])
        rnd = random.Random(5)
        with open(self.data / "data.jsonl", "w") as f:
            for _ in range(400):
                f.write(json.dumps({"input_ids": [rnd.randrange(512) for _ in range(rnd.randrange(20, 48))]}) + "\n")
        # A small validation set: an evaluation costs about one step.
        with open(self.data / "valid.jsonl", "w") as f:
            for _ in range(6):
                f.write(json.dumps({"input_ids": [rnd.randrange(512) for _ in range(rnd.randrange(20, 48))]}) + "\n")
        self.log = open(root / "ftd.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FTD_TRAIN_BIN": str(engine)}
        self.proc = subprocess.Popen(
            [binary("ftd"), "--data-dir", root / "data", "--tokens-file", root / "tokens",
             "--grpc-listen", f"127.0.0.1:{self.grpc_port}", "--http-listen", f"127.0.0.1:{self.http_port}",
             "--shared-model-root", root / "models", "--data-root", root / "datasets",
             "--output-root", (root / "outputs").mkdir() or root / "outputs",
             "--local-worker", "--local-worker-slots", "2", "--rendezvous-port-base", str(rendezvous_port_base())],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        # stdout carries the log too: copy it to ftd.log (the pipe must not fill up).
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()
        wait_for("ftd ready", lambda: self.ready.is_set() or self.proc.poll() is not None, timeout=60)
        assert self.ready.is_set() and self.proc.poll() is None, (root / "ftd.log").read_text()

    def _pump(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if line.startswith("ftd ready"):
                self.ready.set()

    def url(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"

    def submit(self, steps):
        spec = {"base_model": str(self.root / "models" / "tiny-moe"),
                "datasets": {"train": str(self.data / "data.jsonl"), "validation": str(self.data / "valid.jsonl")},
                "output": str(self.out),
                "hyperparameters": {"max_steps": steps, "global_batch": 8, "micro_batch": 1, "seq_len": 48,
                                    "lr": 3e-3, "schedule": "cosine", "warmup_steps": 2, "seed": 7,
                                    "eval_every": EVAL_EVERY},
                "parallelism": {"ep_size": 2}, "resources": {"nodes": 1, "gpus_per_node": 2},
                "checkpointing": {"every_n_steps": 1000}}
        return json.loads(http(self.url("/v1/jobs"), "POST", {"spec": spec}, TOKEN))["job"]["id"]

    def job(self, job_id):
        return json.loads(http(self.url(f"/v1/jobs/{job_id}"), token=TOKEN))

    def scrape(self):
        return http(self.url("/metrics"))

    def events(self, job_id):
        out, token = [], ""
        while True:
            page = json.loads(http(self.url(f"/v1/jobs/{job_id}/events?pageSize=1000&pageToken={token}"), token=TOKEN))
            out += page.get("events", [])
            token = page.get("nextPageToken", "")
            if not token:
                return out

    def stop(self, job_id):
        try:
            http(self.url(f"/v1/jobs/{job_id}:cancel"), "POST", {}, TOKEN)
        except Exception:  # already ended
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    engine = pathlib.Path(os.environ.get("FTD_TRAIN_BIN", binary("ftd-train")))
    for p in (binary("ftd"), engine):
        if not p.exists():
            pytest.skip(f"{p} is not built")
    root = tmp_path_factory.mktemp("metrics")
    c = Coordinator(root, engine)
    # Far more steps than the tests take (on any machine): running throughout, cancelled at the end.
    job_id = c.submit(steps=20000)
    try:
        def sampled():
            st = c.job(job_id)["status"]
            assert st["state"] not in ("FAILED", "CANCELLED"), (st, (root / "ftd.log").read_text()[-4000:])
            return st if st.get("metrics", {}).get("loss", 0) > 0 and int(st.get("progress", {}).get("step", 0)) >= 2 else None
        wait_for(f"job {job_id} to report metric samples", sampled, timeout=180)
        yield c, job_id
    finally:
        c.stop(job_id)


def test_promtool_accepts_the_live_scrape(live, tmp_path):
    c, job_id = live
    text = c.scrape()
    samples = parse_exposition(text)
    assert find(samples, "ftd_job_loss", job_id=job_id), "the scrape has no sample of the running job"
    res = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    (tmp_path / "scrape.txt").write_text(text)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", (res.stdout, res.stderr)


def test_scrape_holds_the_jobs_series(live):
    c, job_id = live
    job = c.job(job_id)
    samples = parse_exposition(c.scrape())
    labels = {"job_id": job_id, "tenant": "team-metrics", "model": "tiny-moe"}
    (tps,) = find(samples, "ftd_job_tokens_per_second_per_gpu", **labels)
    (loss,) = find(samples, "ftd_job_loss", **labels)
    assert 0 < tps < 1e7
    assert 0 < loss < 20 and math.isfinite(loss)  # vocab 512: ln(512) = 6.2 at the start
    (steps,) = find(samples, "ftd_job_step_duration_seconds_count", **labels)
    assert steps >= 2
    (tokens,) = find(samples, "ftd_job_tokens_total", **labels)
    assert tokens > 0
    assert find(samples, "ftd_job_gpus", **labels) == [2]
    (lr,) = find(samples, "ftd_job_learning_rate", **labels)
    assert 0 < lr <= 3e-3
    # Placement, as the job reports it, joined by worker name.
    ranks = {(int(r.get("rank", 0)), r["worker"], int(r.get("localRank", 0)))
             for r in job["status"]["placement"]["ranks"]}
    exported = {(int(l["rank"]), l["worker"], int(l["local_rank"]))
                for n, l, v in samples if n == "ftd_job_rank_info" and l.get("job_id") == job_id and v == 1}
    assert exported == ranks
    # The local worker is registered: two CPU slots, both busy with the job's ranks.
    assert sum(v for n, l, v in samples if n == "ftd_workers") >= 1
    assert sum(v for n, l, v in samples if n == "ftd_worker_slots" and l["state"] == "busy") == 2
    assert find(samples, "ftd_jobs", state="RUNNING") == [1]
    assert find(samples, "ftd_job_queue_wait_seconds_count") == [1]


def test_prometheus_server_scrapes_tokens_per_second_and_loss(live, tmp_path):
    c, job_id = live
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: ftd\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{c.http_port}']\n")
    log = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=log, stderr=log)
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(q):
        body = json.loads(http(f"{api}/query?" + urllib.parse.urlencode({"query": q})))
        assert body["status"] == "success", body
        return body["data"]["result"]

    try:
        def ready():
            try:
                return http(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2) is not None
            except Exception:
                assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
                return False
        wait_for("prometheus to be ready", ready, timeout=60)
        selector = f'{{job="ftd",job_id="{job_id}"}}'
        # Three scrapes at least, so that the range query holds a series of samples.
        tps = wait_for("tokens/s in Prometheus",
                       lambda: [r for r in query(f"ftd_job_tokens_per_second_per_gpu{selector}[1m]")
                                if len(r["values"]) >= 3], timeout=90)
        loss = wait_for("loss in Prometheus",
                        lambda: [r for r in query(f"ftd_job_loss{selector}[1m]") if len(r["values"]) >= 3],
                        timeout=90)
        assert len(tps) == 1 and len(loss) == 1
        assert tps[0]["metric"]["tenant"] == "team-metrics" and tps[0]["metric"]["model"] == "tiny-moe"
        tps_values = [float(v) for _, v in tps[0]["values"]]
        loss_values = [float(v) for _, v in loss[0]["values"]]
        assert all(0 < v < 1e7 for v in tps_values), tps_values
        assert all(0 < v < 20 for v in loss_values), loss_values
        # The health of the scrape itself, and a derived series the dashboard uses.
        assert [r["value"][1] for r in query('up{job="ftd"}')] == ["1"]
        rate = wait_for("a tokens rate", lambda: query(f"rate(ftd_job_tokens_total{selector}[10s])"), timeout=60)
        assert float(rate[0]["value"][1]) >= 0
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()


def test_dashboard_reads_only_exported_metrics(live):
    c, _ = live
    exported = family_names(c.scrape())
    dashboard = json.loads((REPO / "deploy" / "grafana" / "ftd-dashboard.json").read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) > 40
    used = set()
    missing = []
    for title, expr in exprs:
        for name in promql_metric_names(expr):
            used.add(name)
            if name not in exported and name not in EXTERNAL:
                missing.append((title, name))
    assert not missing, f"dashboard queries metrics the coordinator does not export: {missing}"
    assert used - EXTERNAL, "no ftd metric found in the dashboard"
    # Every exception is used: the list cannot hide a typo in an ftd_ name.
    assert EXTERNAL <= used, EXTERNAL - used
    assert not any(n.startswith("ftd_") for n in EXTERNAL)


def test_eval_loss_reaches_get_job_events_and_metrics(live):
    c, job_id = live

    def evaluated():
        st = c.job(job_id)["status"]
        assert st["state"] not in ("FAILED", "CANCELLED"), st
        m = st.get("metrics", {})
        return m if int(m.get("evalStep", 0)) >= EVAL_EVERY else None
    m = wait_for(f"job {job_id}'s first evaluation in GetJob", evaluated, timeout=180)
    step, loss = int(m["evalStep"]), m["evalLoss"]
    assert step % EVAL_EVERY == 0
    assert 0 < loss < 20 and math.isfinite(loss)
    assert m["loss"] > 0, "step samples after the evaluation keep the training loss too"

    # The value is the engine's: rank 0 logged the same evaluation.
    logged = {int(g[0]): (float(g[1]), int(g[2]))
              for g in EVAL_LOG.findall(http(c.url(f"/v1/jobs/{job_id}/logs"), token=TOKEN))}
    assert step in logged, (step, sorted(logged))
    assert loss == pytest.approx(logged[step][0], abs=2e-6)

    # One eval event per evaluation, in step order, with the validation targets counted.
    evals = [e["eval"] for e in c.events(job_id) if "eval" in e]
    steps = [int(e["step"]) for e in evals]
    assert steps and steps == sorted(steps) and all(s % EVAL_EVERY == 0 for s in steps), steps
    by_step = {int(e["step"]): e for e in evals}
    assert by_step[step]["loss"] == loss
    assert int(by_step[step]["targets"]) == logged[step][1] > 0

    # SSE: the watch stream (from the latest status event, RUNNING, on) names them `event: eval`.
    req = urllib.request.Request(c.url(f"/v1/jobs/{job_id}:watch?afterSeq=0"),
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as stream:
        kind = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: ") and kind == "eval":
                # The stream replays from the latest status event, so its first evaluation may be
                # a later one than evals[0]: it must equal the listed event of its own step.
                got = json.loads(line[len("data: "):])["eval"]
                listed = {int(e["eval"]["step"]): e["eval"] for e in c.events(job_id) if "eval" in e}
                assert got == listed[int(got["step"])], (got, listed)
                break
        else:
            pytest.fail("the watch stream ended without an eval event")

    # /metrics: the latest evaluation (at least as new as the one GetJob showed above).
    samples = parse_exposition(c.scrape())
    labels = {"job_id": job_id, "tenant": "team-metrics", "model": "tiny-moe"}
    (eval_step,) = find(samples, "ftd_job_eval_step", **labels)
    (eval_loss,) = find(samples, "ftd_job_eval_loss", **labels)
    assert eval_step >= step and eval_step % EVAL_EVERY == 0
    latest = {int(e["step"]): e for e in (e["eval"] for e in c.events(job_id) if "eval" in e)}
    assert eval_loss == pytest.approx(latest[int(eval_step)]["loss"], rel=1e-9)
