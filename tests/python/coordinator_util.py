"""One `ftd` coordinator for a test: fixed loopback ports (so that it restarts on them), a
tokens file with a user and an admin of tenant `pipelines`, roots under the test's directory
(base models in a shared model root, datasets and outputs in the tenant's namespace), REST calls."""
import json
import os
import random
import signal
import subprocess
import urllib.error
import urllib.request

from conftest import binary, free_port, rendezvous_port_base, run, wait_for

USER = "usertoken-pipeline-0123456789"
ADMIN = "admintoken-pipeline-0123456789"
TENANT = "pipelines"


def tenant_dirs(root):
    """(shared models, the tenant's datasets, the tenant's outputs) under root, created."""
    dirs = (root / "models", root / "data" / TENANT, root / "outputs" / TENANT)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


class LocalCoordinator:
    def __init__(self, root, *, local_worker=False, engine=None, extra_args=()):
        self.root = root
        self.grpc_port, self.http_port = free_port(), free_port()
        (root / "tokens").write_text(f"{USER} {TENANT} user\n{ADMIN} ops admin\n")
        self.models, self.data, self.outputs = tenant_dirs(root)
        self.args = [binary("ftd"), "--data-dir", root / "store", "--tokens-file", root / "tokens",
                     "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
                     "--http-listen", f"127.0.0.1:{self.http_port}",
                     "--shared-model-root", root / "models", "--data-root", root / "data",
                     "--output-root", root / "outputs",
                     "--rendezvous-port-base", str(rendezvous_port_base()), *extra_args]
        if local_worker:
            self.args += ["--local-worker"]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if engine is not None:
            self.env["FTD_TRAIN_BIN"] = str(engine)
        self.proc = None
        self.log_path = root / "ftd.log"

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}"

    def log_tail(self, n=4000):
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def start(self):
        start_at = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([str(a) for a in self.args], stdout=log, stderr=log,
                                         env=self.env)

        def ready():
            assert self.proc.poll() is None, f"ftd exited:\n{self.log_tail()}"
            return "ftd ready" in self.log_path.read_text(errors="replace")[start_at:]
        wait_for("ftd ready", ready, timeout=60)
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def call(self, method, path, body=None, token=USER):
        """(HTTP status, parsed JSON body) of a REST call."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, method=method, headers=headers, data=data)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def make_tiny_job_assets(root, ftd_train, docs=200, seed=5):
    """A tiny random MoE checkpoint in the shared model root and `docs` token documents in the
    tenant's datasets: under LocalCoordinator's roots. Returns (model dir, dataset)."""
    models, datasets, _ = tenant_dirs(root)
    model, data = models / "tiny", datasets / "train.jsonl"
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "3", "--out", model])
    rnd = random.Random(seed)
    with open(data, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"input_ids": [rnd.randrange(512) for _ in range(rnd.randrange(10, 40))]}) + "\n")
    return model, data
