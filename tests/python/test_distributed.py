"""Distributed training through the real binary on CPU with Gloo: `ftd-train launch --nproc 4 --
train` with dp = 4 and ep in {1, 2, 4} (and skewed gates) against one process training on the
same global batch; the HF checkpoint every layout saves; per-rank expert bytes; resume; a rank
killed mid-step; the launcher's failure handling."""
import json
import os
import re
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import run

NPROC = 4
STEPS = 5
DIST_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV_KEYS}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, ftd_train):
    d = tmp_path_factory.mktemp("dist")
    run([ftd_train, "init-model", "--preset", "tiny", "--dtype", "fp32", "--seed", "3", "--out", d / "model"])
    g = torch.Generator().manual_seed(11)
    with open(d / "data.jsonl", "w") as f:
        for _ in range(40):
            n = int(torch.randint(10, 40, (1,), generator=g))  # uneven lengths: padding, uneven targets per rank
            f.write(json.dumps({"input_ids": torch.randint(0, 512, (n,), generator=g).tolist()}) + "\n")
    return d


def write_spec(workdir, name, ep=1, gate="real", **hp):
    spec = {"base_model": str(workdir / "model"), "datasets": {"train": str(workdir / "data.jsonl")},
            "output": str(workdir / name),
            "hyperparameters": {"max_steps": STEPS, "global_batch": 8, "micro_batch": 1, "seq_len": 48, "lr": 3e-3,
                                "schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, **hp},
            "parallelism": {"ep_size": ep}, "backends": {"gate": gate},
            "device": "cpu", "dtype": "fp32", "precision": "fp32_master"}
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


STEP_RE = re.compile(r"^(?:\[rank 0\] )?step (\d+)/\d+ loss ([0-9.eE+-]+) grad_norm ([0-9.eE+-]+)", re.M)


def losses(stdout):
    return [float(m.group(2)) for m in STEP_RE.finditer(stdout)]


def train_single(ftd_train, spec, *extra):
    return run([ftd_train, "train", "--spec", spec, *extra], env=clean_env(), timeout=300)


def train_launch(ftd_train, spec, *extra, nproc=NPROC):
    return run([ftd_train, "launch", "--nproc", nproc, "--", "train", "--spec", spec, *extra], env=clean_env(),
               timeout=300)


def load_checkpoint(d):
    index = d / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors = {}
        for f in files:
            part = load_file(d / f)
            assert not set(part) & set(tensors), f"{f} repeats tensors"
            tensors.update(part)
        assert set(tensors) == set(json.loads(index.read_text())["weight_map"])
        return tensors
    return load_file(d / "model.safetensors")


_reference_cache = {}


def reference(ftd_train, workdir, gate):
    """One process on the whole global batch (WORLD_SIZE unset)."""
    if gate not in _reference_cache:
        res = train_single(ftd_train, write_spec(workdir, f"single_{gate}", gate=gate))
        ref_losses = losses(res.stdout)
        assert len(ref_losses) == STEPS, res.stdout
        _reference_cache[gate] = (ref_losses, load_checkpoint(workdir / f"single_{gate}" / f"checkpoint-{STEPS}"),
                                  res.stdout)
    return _reference_cache[gate]


def expert_param_bytes(stdout):
    """rank -> expert parameter bytes, from each rank's memory line."""
    out = {}
    for m in re.finditer(r"^(?:\[rank \d+\] )?rank (\d+)/\d+ memory: .* bytes: expert_params=(\d+)", stdout, re.M):
        out[int(m.group(1))] = int(m.group(2))
    return out


def assert_same_training(stdout, out_dir, ref, ep):
    ref_losses, ref_ckpt, _ = ref
    ours = losses(stdout)
    assert len(ours) == STEPS, stdout
    diffs = [abs(a - b) for a, b in zip(ours, ref_losses)]
    assert max(diffs) <= 1e-5, f"ep={ep}: distributed {ours}\nsingle      {ref_losses}"
    assert ref_losses[-1] < ref_losses[0]  # it trained
    ckpt_dir = out_dir / f"checkpoint-{STEPS}"
    ckpt = load_checkpoint(ckpt_dir)
    assert sorted(ckpt) == sorted(ref_ckpt)
    worst = max(((ckpt[k] - ref_ckpt[k]).abs().max().item(), k) for k in ref_ckpt)
    assert worst[0] <= 1e-6, f"ep={ep}: {worst[1]} differs by {worst[0]:.2e}"
    files = sorted(p.name for p in ckpt_dir.glob("model*.safetensors"))
    if ep == 1:
        assert files == ["model.safetensors"]
    else:
        assert files == [f"model-{i:05d}-of-{ep:05d}.safetensors" for i in range(1, ep + 1)]
    states = sorted(p.name for p in (ckpt_dir / "training_state").glob("rank-*.safetensors"))
    assert states == [f"rank-{r:05d}-of-{NPROC:05d}.safetensors" for r in range(NPROC)]
    assert not list(out_dir.glob("*.tmp"))  # finalised


@pytest.mark.parametrize("ep", [1, 2, 4])
def test_ep_and_dp_equal_one_process(ftd_train, workdir, ep):
    ref = reference(ftd_train, workdir, "real")
    res = train_launch(ftd_train, write_spec(workdir, f"ep{ep}", ep=ep))
    assert_same_training(res.stdout, workdir / f"ep{ep}", ref, ep)
    # Every rank holds exactly its 1/ep of the expert parameters.
    single = expert_param_bytes(ref[2])
    per_rank = expert_param_bytes(res.stdout)
    assert sorted(per_rank) == list(range(NPROC)), res.stdout
    assert single[0] > 0
    for r, b in per_rank.items():
        assert b * ep == single[0], f"rank {r}: {b} expert bytes at ep={ep}, total {single[0]}"
    # The launcher prefixes every rank's output.
    assert all(line.startswith(("[rank ", "[launch] ")) for line in res.stdout.splitlines() if line), res.stdout


@pytest.mark.parametrize("gate", ["skew_first_k", "skew_lower_half", "balanced"])
def test_skewed_and_balanced_gates_equal_one_process(ftd_train, workdir, gate):
    # skew_first_k: every token to ep rank 0's experts; skew_lower_half: ep ranks 2 and 3 get none.
    ref = reference(ftd_train, workdir, gate)
    res = train_launch(ftd_train, write_spec(workdir, f"ep4_{gate}", ep=4, gate=gate))
    assert_same_training(res.stdout, workdir / f"ep4_{gate}", ref, 4)


def test_resume_with_the_same_world_size(ftd_train, workdir):
    full = losses(train_launch(ftd_train, write_spec(workdir, "resume_full", ep=2)).stdout)
    spec = write_spec(workdir, "resume_split", ep=2)
    first = losses(train_launch(ftd_train, spec, "--stop-after", "3").stdout)
    second = train_launch(ftd_train, spec, "--resume")
    assert "resumed from" in second.stdout
    rest = losses(second.stdout)
    assert len(first) == 3 and len(rest) == 2, (first, rest)
    assert first + rest == full  # printed identically
    a = load_checkpoint(workdir / "resume_full" / f"checkpoint-{STEPS}")
    b = load_checkpoint(workdir / "resume_split" / f"checkpoint-{STEPS}")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Another world size cannot resume this state.
    res = subprocess.run([str(ftd_train), "launch", "--nproc", "2", "--", "train", "--spec", str(spec), "--resume"],
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    assert res.returncode != 0
    assert "resuming needs the same layout" in res.stdout, res.stdout


def test_bad_ep_size_is_a_clear_error(ftd_train, workdir):
    res = subprocess.run([str(ftd_train), "launch", "--nproc", str(NPROC), "--", "train", "--spec",
                          str(write_spec(workdir, "bad_ep", ep=3))], capture_output=True, text=True, env=clean_env(),
                         timeout=120)
    assert res.returncode != 0
    assert "parallelism.ep_size (3) must divide the world size (4)" in res.stdout, res.stdout


def start_ranks(ftd_train, spec, port):
    procs = []
    for r in range(NPROC):
        env = clean_env(RANK=str(r), WORLD_SIZE=str(NPROC), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(port))
        procs.append(subprocess.Popen([str(ftd_train), "train", "--spec", str(spec)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    return procs


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_step(proc, step, timeout):
    """Reads rank 0's stdout until it logs `step`; returns what it read."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(f"step {step}/"):
            return "".join(seen)
    raise AssertionError("rank 0 never reached step %d:\n%s" % (step, "".join(seen)))


def test_killed_rank_makes_the_others_fail_within_60s(ftd_train, workdir):
    spec = write_spec(workdir, "killed", ep=2, max_steps=100000, global_batch=8, seq_len=48)
    procs = start_ranks(ftd_train, spec, free_port())
    try:
        wait_for_step(procs[0], 2, timeout=120)
        procs[2].send_signal(signal.SIGKILL)
        t0 = time.time()
        for r in (0, 1, 3):
            procs[r].wait(timeout=60)
        elapsed = time.time() - t0
        for r in (0, 1, 3):
            err = procs[r].stderr.read()
            assert procs[r].returncode not in (0, None), f"rank {r} exited {procs[r].returncode}"
            assert re.search(rf"error: rank {r}/4: .*(collective|failed)", err), f"rank {r}: {err}"
        assert elapsed < 60
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def rank_pids(launcher_pid):
    with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as f:
        return [int(x) for x in f.read().split()]


def test_launcher_stops_every_rank_when_one_dies(ftd_train, workdir):
    spec = write_spec(workdir, "launcher_kill", ep=4, max_steps=100000)
    launcher = subprocess.Popen([str(ftd_train), "launch", "--nproc", str(NPROC), "--", "train", "--spec", str(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    try:
        seen = []
        while True:
            line = launcher.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
            if line.startswith("[rank 0] step 1/"):
                break
        children = rank_pids(launcher.pid)
        assert len(children) == NPROC
        os.kill(children[1], signal.SIGKILL)
        out, _ = launcher.communicate(timeout=60)
        assert launcher.returncode != 0
        assert any(re.match(r"\[launch\] rank \d was killed by signal 9", l) for l in out.splitlines()), out
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", pid
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
