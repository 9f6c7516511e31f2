"""The Python client package (client/python, `ftd-client`): pip-installed into a fresh virtual
environment, it drives a real coordinator: create (idempotent request_id), get, list, cancel,
plan, watch, events, checkpoints and logs, errors as exceptions with the gRPC code and the
field; a watch that resumes across a coordinator restart; and, with the engine built, a job on
`ftd --local-worker` from submission to SUCCEEDED and its checkpoints, across a restart too."""
import json
import pathlib
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import binary, run, wait_for
from coordinator_util import USER, LocalCoordinator, make_tiny_job_assets

DRIVER = pathlib.Path(__file__).with_name("ftd_client_driver.py")


def drive(py, scenario, **args):
    """Runs a driver scenario to completion; its JSON lines."""
    res = run([py, DRIVER, scenario, json.dumps(args)], timeout=600)
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def one(lines, key):
    (v,) = [line[key] for line in lines if key in line]
    return v


class Streamed:
    """A driver scenario running in the background, its JSON lines collected as they come."""

    def __init__(self, py, scenario, **args):
        self.stderr = tempfile.TemporaryFile("w+")  # a file: a full pipe would stall the driver
        self.proc = subprocess.Popen([str(py), str(DRIVER), scenario, json.dumps(args)],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def wait_for(self, what, pred, timeout=120):
        def seen():
            assert self.proc.poll() is None or any(pred(x) for x in self.lines), \
                f"driver exited ({self.proc.returncode}):\n{self.errors()}\n{self.lines}"
            return any(pred(x) for x in self.lines)
        wait_for(what, seen, timeout=timeout)

    def finish(self, timeout=300, context=lambda: ""):
        """Waits for the driver to end; its lines. An overrun fails with the driver's thread
        stacks, its lines and `context()` (e.g. the coordinator's log)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the driver dumps its threads' stacks
            time.sleep(1)
            self.proc.kill()
            self.proc.wait()
            self.reader.join(timeout=10)
            pytest.fail(f"driver still running after {timeout} s\n--- its stderr:\n{self.errors()}\n"
                        f"--- its lines:\n{self.lines}\n--- context:\n{context()}")
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, f"driver failed:\n{self.errors()}\n{self.lines}"
        return self.lines

    def errors(self):
        self.stderr.seek(0)
        return self.stderr.read()[-8000:]


@pytest.fixture
def coordinator(tmp_path):
    if not binary("ftd").exists():
        pytest.skip(f"{binary('ftd')} is not built")
    c = LocalCoordinator(tmp_path).start()
    yield c
    c.stop()


def queued_spec(c):
    """A spec that validates (no worker runs it: it stays QUEUED)."""
    (c.models / "tiny").mkdir(exist_ok=True)
    (c.data / "train.jsonl").write_text('{"input_ids": [1, 2, 3]}\n')
    return {"base_model": str(c.models / "tiny"),
            "datasets": {"train": str(c.data / "train.jsonl")},
            "hyperparameters": {"max_steps": 10, "global_batch": 2, "micro_batch": 1, "seq_len": 32, "lr": 1e-4},
            "resources": {"nodes": 1, "gpus_per_node": 2}}


def test_client_calls_results_and_errors(client_python, coordinator):
    lines = drive(client_python, "basics", endpoint=coordinator.endpoint, token=USER, spec=queued_spec(coordinator))
    created = one(lines, "created")
    assert one(lines, "again") == created                       # same request_id: same job
    assert one(lines, "state") == "QUEUED" and one(lines, "total_steps") == 10
    assert one(lines, "spec_type") == "JobSpec"                  # typed results
    conflict = one(lines, "conflict")["error"]
    assert conflict["type"] == "AlreadyExists" and conflict["code"] == "ALREADY_EXISTS"
    assert created in conflict["message"]
    invalid = one(lines, "invalid")["error"]
    assert invalid == {"type": "InvalidArgument", "code": "INVALID_ARGUMENT", "field": "spec.hyperparameters.lr",
                       "message": invalid["message"]}
    assert invalid["message"].startswith("spec.hyperparameters.lr: must be")
    unknown = one(lines, "unknown_field")["error"]
    assert (unknown["type"], unknown["field"]) == ("InvalidArgument", "spec.hyperparameterz")
    label = one(lines, "bad_label")["error"]
    assert label["code"] == "INVALID_ARGUMENT" and label["field"] == "labels[Bad Key]", label
    plan = one(lines, "plan")
    assert plan["world_size"] == 2 and plan["data_parallel_size"] == 2 and plan["gradient_accumulation_steps"] == 1
    assert any("memory estimate unavailable" in n for n in plan["notes"]), plan
    assert one(lines, "plan_invalid")["error"]["field"] == "spec.resources.gpus_per_node"
    assert one(lines, "got") == created and one(lines, "labels") == {"team": "nlp"}
    assert one(lines, "create_time").endswith("Z")
    assert one(lines, "listed_by_label") == [created]
    assert created in one(lines, "listed_queued") and one(lines, "listed_succeeded") == []
    assert one(lines, "paged") == 6                              # 1 + 5, two per page
    assert one(lines, "bad_state")["error"]["field"] == "states[0]"
    nf = one(lines, "not_found")["error"]
    assert (nf["type"], nf["code"], nf["field"]) == ("NotFound", "NOT_FOUND", None)
    bad_id = one(lines, "bad_id")["error"]
    assert (bad_id["code"], bad_id["field"]) == ("INVALID_ARGUMENT", "id")
    assert one(lines, "bad_token")["error"]["type"] == "Unauthenticated"
    assert one(lines, "no_token")["error"]["type"] == "Unauthenticated"
    assert one(lines, "cancelled") == "CANCELLED"
    watched = one(lines, "watched")
    assert watched[-1][1] == "status" and one(lines, "final") == "CANCELLED"
    events = one(lines, "events")
    assert events == list(range(1, len(events) + 1)) and len(events) >= 3   # paged one at a time
    assert any("pipeline aborted" in m for m in one(lines, "messages")), one(lines, "messages")
    assert one(lines, "checkpoints") == [] and one(lines, "logs") == []
    assert one(lines, "as_dict") == {"team": "nlp"}
    unreachable = one(lines, "unreachable")["error"]
    assert unreachable["type"] == "Unavailable"
    assert unreachable["code"] == "UNAVAILABLE"


def test_client_reads_the_environment_and_config_file_as_ftctl(client_python, coordinator, tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "ftd").mkdir(parents=True)
    (tmp_path / "token").write_text(USER + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"# the coordinator\nendpoint: 'grpc://{coordinator.endpoint}/'\n"
                      f"token_file: {tmp_path / 'token'}   # a file, not the token\ntimeout: 12\n")
    bad_key = tmp_path / "bad-key.yaml"
    bad_key.write_text("endpoint: h:1\ntoekn: x\n")
    bad_bool = tmp_path / "bad-bool.yaml"
    bad_bool.write_text("tls: maybe\n")
    skip_verify = tmp_path / "skip.yaml"
    skip_verify.write_text("endpoint: h:1\ninsecure_skip_verify: true\n")
    missing = tmp_path / "missing.yaml"
    lines = drive(client_python, "config", endpoint=coordinator.endpoint, token=USER, home=str(home),
                  config=str(config), bad_configs=[str(bad_key), str(bad_bool), str(skip_verify), str(missing)])
    assert one(lines, "env") is True and lines[0]["endpoint"] == coordinator.endpoint
    assert one(lines, "file") == str(config)
    assert lines[1]["endpoint"] == coordinator.endpoint and lines[1]["timeout"] == 12.0
    errors = {pathlib.Path(x["bad"]).name: x["error"] for x in lines if "bad" in x}
    assert errors["bad-key.yaml"].startswith(f"{bad_key}:2: toekn: unknown key"), errors
    assert errors["bad-bool.yaml"] == f"{bad_bool}:1: tls: expected true or false"
    assert "insecure_skip_verify: not supported" in errors["skip.yaml"] and "ca_cert" in errors["skip.yaml"]
    assert errors["missing.yaml"].startswith(f"{missing}: cannot read the config file")


def test_client_over_tls(client_python, tmp_path):
    if not binary("ftd").exists():
        pytest.skip(f"{binary('ftd')} is not built")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    c = LocalCoordinator(tmp_path, extra_args=["--tls-cert", cert, "--tls-key", key]).start()
    try:
        lines = drive(client_python, "tls", endpoint=c.endpoint, token=USER, ca_cert=str(cert))
    finally:
        c.stop()
    assert lines[0] == {"tls": True, "jobs": 0}
    assert lines[1] == {"https_prefix": c.endpoint, "jobs": 0}
    assert one(lines, "untrusted")["error"]["code"] == "UNAVAILABLE"     # not signed by a system CA
    assert one(lines, "plaintext")["error"]["code"] == "UNAVAILABLE"


def test_watch_resumes_across_a_coordinator_restart(client_python, coordinator):
    status, body = coordinator.call("POST", "/v1/jobs", {"spec": queued_spec(coordinator), "requestId": "resume-1"})
    assert status == 200, body
    job = body["job"]["id"]
    watch = Streamed(client_python, "watch", endpoint=coordinator.endpoint, token=USER, job=job)
    watch.wait_for("the first event", lambda x: "seq" in x)
    first = watch.lines[0]["seq"]

    # A crash (SIGKILL), some events while the watch is disconnected, then the coordinator back.
    coordinator.stop(signal.SIGKILL)
    watch.wait_for("a reconnect attempt", lambda x: "reconnect" in x)
    coordinator.start()
    assert coordinator.call("POST", f"/v1/jobs/{job}:cancel", {"reason": "while watched"})[0] == 200
    lines = watch.finish(timeout=120, context=coordinator.log_tail)

    seqs = [x["seq"] for x in lines if "seq" in x]
    assert lines[-1] == {"done": True}
    assert lines[-2]["kind"] == "status" and lines[-2]["state"] == "CANCELLED", lines
    reconnects = [x for x in lines if "reconnect" in x]
    assert reconnects and all(r["reconnect"] == first and r["code"] == "UNAVAILABLE" for r in reconnects), reconnects
    # Gap-free and without repeats: exactly the stored events after the first one received.
    status, page = coordinator.call("GET", f"/v1/jobs/{job}/events?pageSize=1000")
    stored = [int(e["seq"]) for e in page["events"]]
    assert seqs == [s for s in stored if s >= first], (seqs, stored)


class FreezingProxy:
    """A TCP proxy to `target` whose open connections can be frozen: their bytes stop flowing
    both ways while the sockets stay open, as when a NAT or load balancer drops a flow without
    a word. Connections made after freeze() flow."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.generation = 0
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            generation = self.generation
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, generation), daemon=True).start()

    def _pump(self, src, dst, generation):
        try:
            while generation == self.generation:
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data or generation != self.generation:
                    break
                dst.sendall(data)
        except OSError:
            pass
        if generation == self.generation:  # a real close passes through; a frozen one does not
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self):
        self.generation += 1

    def close(self):
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_watch_notices_a_connection_that_went_silent_and_resumes(client_python, coordinator):
    """Keepalive pings find a watch connection that stopped carrying bytes without closing;
    the watch reopens (through a fresh connection) and gets the rest, without gap or repeat."""
    status, body = coordinator.call("POST", "/v1/jobs", {"spec": queued_spec(coordinator), "requestId": "silent-1"})
    assert status == 200, body
    job = body["job"]["id"]
    proxy = FreezingProxy(coordinator.endpoint)
    try:
        watch = Streamed(client_python, "watch", endpoint=proxy.endpoint, token=USER, job=job, keepalive_seconds=10)
        watch.wait_for("the first event", lambda x: "seq" in x)
        first = watch.lines[0]["seq"]
        proxy.freeze()
        frozen_at = time.time()
        assert coordinator.call("POST", f"/v1/jobs/{job}:cancel", {"reason": "while frozen"})[0] == 200
        # Pings every 10 s, 10 s for the answer: the dead connection is given up within ~20 s
        # (the previous client, pinging every 310 s, waited past any test's patience).
        lines = watch.finish(timeout=90, context=coordinator.log_tail)
    finally:
        proxy.close()
    reconnects = [x for x in lines if "reconnect" in x]
    assert reconnects and reconnects[0]["code"] == "UNAVAILABLE" and reconnects[0]["reconnect"] == first, lines
    assert 5 < reconnects[0]["time"] - frozen_at < 60, (reconnects[0]["time"] - frozen_at, lines)
    assert lines[-1] == {"done": True}
    assert lines[-2]["kind"] == "status" and lines[-2]["state"] == "CANCELLED", lines
    seqs = [x["seq"] for x in lines if "seq" in x]
    status, page = coordinator.call("GET", f"/v1/jobs/{job}/events?pageSize=1000")
    assert seqs == [int(e["seq"]) for e in page["events"] if int(e["seq"]) >= first], (seqs, page)


def test_keepalive_below_what_the_coordinator_accepts_is_refused(client_python):
    res = subprocess.run([str(client_python), "-c", "import ftd_client as fc; fc.Client('127.0.0.1:1', keepalive_seconds=5)"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "keepalive_seconds: must be at least 10" in res.stderr, res.stderr


# --- With the engine: a real job on `ftd --local-worker`.

def test_pipeline_on_a_local_worker_reaches_succeeded_across_a_coordinator_restart(client_python, tmp_path, ftd_train):
    root = tmp_path
    model, data = make_tiny_job_assets(root, ftd_train)
    c = LocalCoordinator(root, local_worker=True, engine=ftd_train,
                         extra_args=["--local-worker-slots", "1", "--adopt-grace", "1",
                                     "--heartbeat-interval", "0.2", "--heartbeat-timeout", "3"])
    c.start()
    try:
        spec = {"base_model": str(model), "datasets": {"train": str(data)},
                # Far more steps after the first checkpoint than the restart takes to begin.
                "hyperparameters": {"max_steps": 120, "global_batch": 4, "micro_batch": 1, "seq_len": 48,
                                    "lr": 3e-3, "warmup_steps": 2, "seed": 7},
                "resources": {"nodes": 1, "gpus_per_node": 1}, "checkpointing": {"every_n_steps": 10},
                "scheduling": {"max_restarts": 2}}
        p = Streamed(client_python, "pipeline", endpoint=c.endpoint, token=USER, spec=spec, request_id="airflow-42")
        p.wait_for("the first checkpoint", lambda x: x.get("kind") == "checkpoint", timeout=300)
        c.stop(signal.SIGKILL)   # the local worker and its rank go with it
        time.sleep(1)
        c.start()
        lines = p.finish(timeout=600)
    finally:
        c.stop()
    final = one(lines, "final")
    assert final == "SUCCEEDED", (lines[-3:], c.log_tail())
    assert [x for x in lines if "reconnect" in x], lines
    seqs = [x["seq"] for x in lines if "seq" in x]
    assert seqs == sorted(set(seqs)), seqs                       # no repeats, in order
    states = [x["state"] for x in lines if x.get("kind") == "status"]
    assert states[-1] == "SUCCEEDED", states
    # Attempt 0 went with the coordinator (and its local worker); attempt 1 resumed.
    first_run = states.index("RUNNING")
    assert "QUEUED" in states[first_run:] and "RUNNING" in states[states.index("QUEUED", first_run):], states
    assert one(lines, "attempt") == 1
    assert int(one(lines, "steps")) == 120
    ckpts = one(lines, "checkpoints")
    assert [x["step"] for x in ckpts][-1] == 120 and all(pathlib.Path(x["path"]).is_dir() for x in ckpts), ckpts
    assert one(lines, "logs") and one(lines, "log_ranks") == [0]
