"""spec.webhook_url end to end: the real `ftd` POSTs a job's JSON to a real local HTTP receiver
when the job ends, signed with HMAC-SHA256 under the tenant's secret, retried with backoff after
5xx answers, each attempt recorded as a job event; destinations off the operator's allow-list
and tenants without a secret are refused at submission."""
import hashlib
import hmac
import http.server
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import binary, free_port, wait_for

USER = "hookuser-token-0123456789"
OTHER = "nosecret-token-0123456789"
SECRET = "s3cret-of-team-hooks-0123456789"


class Receiver:
    """A real HTTP server on loopback; answers each POST with the next status of `answers`
    (the last one repeats) after `delay` seconds, and records what it got."""

    def __init__(self, answers, delay=0.0):
        self.answers, self.delay, self.got = list(answers), delay, []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.got.append((dict(self.headers), body, time.monotonic()))
                    status = outer.answers[min(len(outer.got) - 1, len(outer.answers) - 1)]
                time.sleep(outer.delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self):
        with self.lock:
            return list(self.got)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Coordinator:
    def __init__(self, root, allow):
        self.root = root
        self.grpc, self.http_port = free_port(), free_port()
        (root / "tokens").write_text(f"{USER} team user\n{OTHER} other user\n")
        (root / "secrets").write_text(f"# tenant secret\nteam {SECRET}\n")
        for d in ("models/base", "datasets/team", "datasets/other", "outputs"):
            (root / d).mkdir(parents=True)
        (root / "datasets/team/train.jsonl").write_text('{"input_ids": [1, 2, 3]}\n')
        (root / "datasets/other/train.jsonl").write_text('{"input_ids": [1, 2, 3]}\n')
        self.log = open(root / "ftd.log", "w")
        args = [binary("ftd"), "--data-dir", root / "data", "--tokens-file", root / "tokens",
                "--grpc-listen", f"127.0.0.1:{self.grpc}", "--http-listen", f"127.0.0.1:{self.http_port}",
                "--shared-model-root", root / "models", "--data-root", root / "datasets",
                "--output-root", root / "outputs", "--webhook-secrets", root / "secrets",
                "--webhook-backoff", "0.2", "--webhook-max-attempts", "4", "--webhook-timeout", "3"]
        for a in allow:
            args += ["--webhook-allow", a]
        self.proc = subprocess.Popen([str(a) for a in args], stdout=self.log, stderr=self.log)
        wait_for("ftd ready", lambda: "ftd ready" in (root / "ftd.log").read_text() or self.proc.poll() is not None,
                 timeout=60)
        assert self.proc.poll() is None, (root / "ftd.log").read_text()

    def call(self, method, path, body=None, token=USER):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read().decode() or "{}")

    def spec(self, url):
        return {"base_model": str(self.root / "models/base"), "datasets": {"train": "train.jsonl"},
                "hyperparameters": {"max_steps": 10, "global_batch": 2, "micro_batch": 1, "seq_len": 16, "lr": 1e-4},
                "resources": {"nodes": 1, "gpus_per_node": 1}, "webhook_url": url}

    def submit(self, url, token=USER):
        return self.call("POST", "/v1/jobs", {"spec": self.spec(url)}, token)["job"]["id"]

    def refusal(self, url, token=USER):
        with pytest.raises(urllib.error.HTTPError) as e:
            self.submit(url, token)
        assert e.value.code == 400
        return json.loads(e.value.read().decode())["message"]

    def messages(self, job_id):
        events = self.call("GET", f"/v1/jobs/{job_id}/events?pageSize=1000")["events"]
        return [e["message"] for e in events if "message" in e]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def receiver():
    r = Receiver([500, 503, 200])
    yield r
    r.close()


@pytest.fixture
def coordinator(tmp_path, receiver):
    if not binary("ftd").exists():
        pytest.skip("ftd is not built")
    c = Coordinator(tmp_path, [f"127.0.0.1:{receiver.port}"])
    yield c
    c.stop()


def test_terminal_state_is_posted_signed_and_retried_after_5xx(coordinator, receiver):
    url = f"http://127.0.0.1:{receiver.port}/hooks/ftd?src=test"
    job_id = coordinator.submit(url)
    coordinator.call("POST", f"/v1/jobs/{job_id}:cancel", {"reason": "webhook test"})  # QUEUED -> CANCELLED
    wait_for("three delivery attempts", lambda: len(receiver.requests()) >= 3, timeout=30)
    wait_for("the delivery event", lambda: any("webhook: delivered" in m for m in coordinator.messages(job_id)),
             timeout=30)
    got = receiver.requests()
    assert len(got) == 3, [g[0] for g in got]  # 500, 503, then 200: no further attempt
    bodies = {g[1] for g in got}
    assert len(bodies) == 1, "every attempt carries the same body"
    for headers, body, _ in got:
        sig = headers["X-Ftd-Signature-256"]
        want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(sig, want), (sig, want)
        assert headers["X-Ftd-Event"] == "job.cancelled"
        assert headers["X-Ftd-Job"] == job_id
        assert headers["Content-Type"] == "application/json"
    assert len({g[0]["X-Ftd-Delivery"] for g in got}) == 1, "one delivery id for all attempts"
    job = json.loads(got[0][1])
    assert job["id"] == job_id and job["status"]["state"] == "CANCELLED" and job["tenant"] == "team"
    # A tampered body does not verify under the secret.
    assert not hmac.compare_digest(got[0][0]["X-Ftd-Signature-256"],
                                   "sha256=" + hmac.new(SECRET.encode(), got[0][1] + b" ", hashlib.sha256).hexdigest())
    # Backoff: the retries wait (0.2 s, then 0.4 s).
    assert got[1][2] - got[0][2] >= 0.15 and got[2][2] - got[1][2] >= 0.3
    msgs = [m for m in coordinator.messages(job_id) if m.startswith("webhook:")]
    assert len(msgs) == 3, msgs
    assert "HTTP 500; retrying in 200ms" in msgs[0] and "(attempt 1 of 4)" in msgs[0], msgs
    assert "HTTP 503; retrying in 400ms" in msgs[1], msgs
    assert "webhook: delivered job.cancelled to " + url in msgs[2] and "HTTP 200" in msgs[2], msgs


def test_destinations_off_the_allow_list_and_tenants_without_a_secret_are_refused(coordinator, receiver):
    other_port = free_port()
    assert "spec.webhook_url: destination 127.0.0.1:%d is not in the operator's allow-list" % other_port in \
        coordinator.refusal(f"http://127.0.0.1:{other_port}/hook")
    assert "not in the operator's allow-list" in coordinator.refusal("http://169.254.169.254/latest/meta-data")
    assert "not in the operator's allow-list" in coordinator.refusal(f"http://localhost:{receiver.port}/hook")
    assert "must not carry user information" in coordinator.refusal(f"http://127.0.0.1:{receiver.port}@10.0.0.1/")
    assert "spec.webhook_url: tenant other has no webhook signing secret" in \
        coordinator.refusal(f"http://127.0.0.1:{receiver.port}/hook", token=OTHER)
    assert receiver.requests() == []


def test_a_receiver_that_keeps_failing_is_given_up_after_max_attempts(tmp_path):
    if not binary("ftd").exists():
        pytest.skip("ftd is not built")
    failing = Receiver([500])
    c = Coordinator(tmp_path, [f"127.0.0.1:{failing.port}"])
    try:
        job_id = c.submit(f"http://127.0.0.1:{failing.port}/")
        c.call("POST", f"/v1/jobs/{job_id}:cancel", {})
        wait_for("giving up", lambda: any("giving up" in m for m in c.messages(job_id)), timeout=30)
        assert len(failing.requests()) == 4
        assert sum(m.startswith("webhook:") for m in c.messages(job_id)) == 4
    finally:
        c.stop()
        failing.close()


def test_a_hanging_receiver_blocks_nothing_but_its_delivery(tmp_path):
    if not binary("ftd").exists():
        pytest.skip("ftd is not built")
    slow = Receiver([200], delay=20)
    c = Coordinator(tmp_path, [f"127.0.0.1:{slow.port}"])
    try:
        job_id = c.submit(f"http://127.0.0.1:{slow.port}/")
        c.call("POST", f"/v1/jobs/{job_id}:cancel", {})
        wait_for("the delivery to hang", lambda: len(slow.requests()) == 1, timeout=30)
        # The API and the job manager answer while the delivery waits for its receiver.
        t0 = time.monotonic()
        other = c.submit(f"http://127.0.0.1:{slow.port}/")
        assert c.call("POST", f"/v1/jobs/{other}:cancel", {})["status"]["state"] == "CANCELLED"
        assert time.monotonic() - t0 < 5
        # The attempt times out (3 s) and is retried: recorded as a failed attempt.
        wait_for("the timeout to be recorded",
                 lambda: any("no answer" in m and "retrying" in m for m in c.messages(job_id)), timeout=30)
    finally:
        c.stop()
        slow.close()
