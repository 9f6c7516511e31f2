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

from conftest import clean_env, free_port, process_running, run

NPROC = 4
STEPS = 5
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
    # adam_eps 1e-6 (not 1e-8): the ranks sum gradients in another order than one process, and
    # with eps 1e-8 AdamW turns that 1e-7 relative rounding into up to 1e-5 on the few weights
    # whose gradient is within ~eps of zero (2 of 32768 embedding entries here); 1e-6 keeps
    # every tensor within the 1e-6 the checkpoint comparison demands.
    spec = {"base_model": str(workdir / "model"), "datasets": {"train": str(workdir / "data.jsonl")},
            "output": str(workdir / name),
            "hyperparameters": {"max_steps": STEPS, "global_batch": 8, "micro_batch": 1, "seq_len": 48, "lr": 1e-3,
                                "schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 0.5,
                                "seed": 7, "adam_eps": 1e-6, **hp},
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


class Runs:
    """Training runs shared by the tests of this module (each runs once, on first use): the
    single-process reference per gate and the 4-rank launches per (ep, gate), each with a
    metrics file."""

    def __init__(self, ftd_train, workdir):
        self.ftd_train, self.workdir = ftd_train, workdir
        self._cache = {}

    def reference(self, gate="real"):
        """One process on the whole global batch (WORLD_SIZE unset)."""
        key = ("single", gate)
        if key not in self._cache:
            name = f"single_{gate}"
            metrics = self.workdir / f"{name}.metrics.jsonl"
            res = train_single(self.ftd_train, write_spec(self.workdir, name, gate=gate), "--metrics-out", metrics)
            ref_losses = losses(res.stdout)
            assert len(ref_losses) == STEPS, res.stdout
            self._cache[key] = (ref_losses, load_checkpoint(self.workdir / name / f"checkpoint-{STEPS}"), res.stdout,
                                metrics)
        return self._cache[key]

    def launch(self, ep, gate="real"):
        """4 ranks (dp = 4) with this ep size; returns (stdout, output dir, metrics file)."""
        key = ("launch", ep, gate)
        if key not in self._cache:
            name = f"ep{ep}_{gate}"
            metrics = self.workdir / f"{name}.metrics.jsonl"
            res = train_launch(self.ftd_train, write_spec(self.workdir, name, ep=ep, gate=gate), "--metrics-out",
                               metrics)
            self._cache[key] = (res.stdout, self.workdir / name, metrics)
        return self._cache[key]


@pytest.fixture(scope="module")
def runs(ftd_train, workdir):
    return Runs(ftd_train, workdir)


def expert_param_bytes(stdout):
    """rank -> expert parameter bytes, from each rank's memory line."""
    out = {}
    for m in re.finditer(r"^(?:\[rank \d+\] )?rank (\d+)/\d+ memory: .* bytes: expert_params=(\d+)", stdout, re.M):
        out[int(m.group(1))] = int(m.group(2))
    return out


def assert_same_training(stdout, out_dir, ref, ep):
    ref_losses, ref_ckpt = ref[0], ref[1]
    ours = losses(stdout)
    assert len(ours) == STEPS, stdout
    diffs = [abs(a - b) for a, b in zip(ours, ref_losses)]
    assert max(diffs) <= 1e-5, f"ep={ep}: distributed {ours}\nsingle      {ref_losses}"
    ckpt_dir = out_dir / f"checkpoint-{STEPS}"
    ckpt = load_checkpoint(ckpt_dir)
    assert sorted(ckpt) == sorted(ref_ckpt)
    # It trained: every tensor moved from the initial weights (experts without tokens through
    # weight decay), and the weights as a whole by far more than the tolerance below.
    init = load_checkpoint(out_dir.parent / "model")
    moved = {k: (ckpt[k] - init[k]).abs().max().item() for k in init}
    # (The balanced gate ignores the router, which only weight decay would move; it is not decayed.)
    assert all(v > 0 for k, v in moved.items() if not k.endswith("mlp.gate.weight")), moved
    assert max(moved.values()) > 1e-3
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
def test_ep_and_dp_equal_one_process(runs, ep):
    ref = runs.reference("real")
    stdout, out_dir, _ = runs.launch(ep)
    assert_same_training(stdout, out_dir, ref, ep)
    # Every rank holds exactly its 1/ep of the expert parameters.
    single = expert_param_bytes(ref[2])
    per_rank = expert_param_bytes(stdout)
    assert sorted(per_rank) == list(range(NPROC)), stdout
    assert single[0] > 0
    for r, b in per_rank.items():
        assert b * ep == single[0], f"rank {r}: {b} expert bytes at ep={ep}, total {single[0]}"
    # The launcher prefixes every rank's output.
    assert all(line.startswith(("[rank ", "[launch] ")) for line in stdout.splitlines() if line), stdout


@pytest.mark.parametrize("gate", ["skew_first_k", "skew_lower_half", "balanced"])
def test_skewed_and_balanced_gates_equal_one_process(runs, gate):
    # skew_first_k: every token to ep rank 0's experts; skew_lower_half: ep ranks 2 and 3 get none.
    ref = runs.reference(gate)
    stdout, out_dir, _ = runs.launch(4, gate)
    assert_same_training(stdout, out_dir, ref, 4)


STEP_FIELDS = {"event": str, "rank": int, "world_size": int, "step": int, "total_steps": int, "epoch": int,
               "tokens": int, "loss": float, "grad_norm": float, "lr": float, "step_seconds": float,
               "forward_seconds": float, "backward_seconds": float, "optimizer_seconds": float,
               "all_to_all_seconds": float, "tokens_per_second": float, "tokens_per_second_per_gpu": float,
               "tflops_per_gpu": float, "mfu": float, "peak_memory_bytes": int, "reserved_memory_bytes": int,
               "expert_load_imbalance": float}


def read_metrics(path):
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]


def check_step_lines(steps, rank, world):
    assert [m["step"] for m in steps] == list(range(1, STEPS + 1))
    for m in steps:
        assert set(m) == set(STEP_FIELDS), sorted(set(m) ^ set(STEP_FIELDS))
        for k, t in STEP_FIELDS.items():
            assert isinstance(m[k], (int, float) if t is float else t), (k, m[k])
        assert (m["rank"], m["world_size"], m["total_steps"], m["epoch"]) == (rank, world, STEPS, 0)
        assert 8 * 10 <= m["tokens"] <= 8 * 48  # every rank's input tokens: 8 sequences of 10..48
        assert m["step_seconds"] > 0 and m["forward_seconds"] > 0 and m["backward_seconds"] > 0
        assert m["optimizer_seconds"] > 0
        assert m["forward_seconds"] + m["backward_seconds"] + m["optimizer_seconds"] <= m["step_seconds"]
        assert m["tokens_per_second"] == pytest.approx(m["tokens"] / m["step_seconds"], rel=1e-6)
        assert m["tokens_per_second_per_gpu"] == pytest.approx(m["tokens_per_second"] / world, rel=1e-6)
        assert m["expert_load_imbalance"] >= 1.0
        assert m["mfu"] == 0 and m["peak_memory_bytes"] == 0  # CPU: not measured
        assert m["lr"] >= 0 and m["grad_norm"] > 0
    assert steps[0]["lr"] == 0 and steps[-1]["lr"] > 0  # linear warmup from 0 over 2 steps (as HF)


def test_metrics_file_single_process(runs):
    ref_losses, _, _, metrics = runs.reference("real")
    lines = read_metrics(metrics)
    steps = [m for m in lines if m["event"] == "step"]
    check_step_lines(steps, 0, 1)
    assert [m["loss"] for m in steps] == pytest.approx(ref_losses, abs=1e-6)  # stdout prints 6 decimals
    assert all(m["all_to_all_seconds"] == 0 for m in steps)  # ep = 1: experts are local, nothing exchanged
    events = [m for m in lines if m["event"] != "step"]
    final = str(runs.workdir / "single_real" / f"checkpoint-{STEPS}")
    assert events == [{"event": "checkpoint", "step": STEPS, "path": final},
                      {"event": "done", "step": STEPS, "path": final}]
    assert lines[-1]["event"] == "done"


def test_metrics_files_of_four_ranks(runs):
    stdout, out_dir, metrics = runs.launch(2)
    rank0 = read_metrics(metrics)
    steps0 = [m for m in rank0 if m["event"] == "step"]
    check_step_lines(steps0, 0, NPROC)
    assert [m["loss"] for m in steps0] == pytest.approx(losses(stdout), abs=1e-6)
    # tokens counts every rank's inputs: the same global batches as the single process's.
    single = [m for m in read_metrics(runs.reference("real")[3]) if m["event"] == "step"]
    assert [m["tokens"] for m in steps0] == [m["tokens"] for m in single]
    final = str(out_dir / f"checkpoint-{STEPS}")
    assert [m for m in rank0 if m["event"] != "step"] == [
        {"event": "checkpoint", "step": STEPS, "path": final}, {"event": "done", "step": STEPS, "path": final}]
    for r in range(1, NPROC):
        lines = read_metrics(metrics.parent / f"{metrics.name}.rank{r}")
        assert all(m["event"] == "step" for m in lines)  # checkpoint/done events come from rank 0 only
        check_step_lines(lines, r, NPROC)
        # The loss, tokens and load imbalance are global: every rank reports the same.
        for a, b in zip(lines, steps0):
            assert (a["loss"], a["tokens"], a["expert_load_imbalance"]) == (b["loss"], b["tokens"],
                                                                             b["expert_load_imbalance"])
        assert all(m["all_to_all_seconds"] > 0 for m in lines)  # ep = 2: tokens were exchanged


def test_resume_with_the_same_world_size(ftd_train, workdir, runs):
    full_stdout, full_dir, _ = runs.launch(2)
    full = losses(full_stdout)
    spec = write_spec(workdir, "resume_split", ep=2)
    first = losses(train_launch(ftd_train, spec, "--stop-after", "3").stdout)
    second = train_launch(ftd_train, spec, "--resume")
    assert "resumed from" in second.stdout
    rest = losses(second.stdout)
    assert len(first) == 3 and len(rest) == 2, (first, rest)
    assert first + rest == full  # printed identically
    a = load_checkpoint(full_dir / f"checkpoint-{STEPS}")
    b = load_checkpoint(workdir / "resume_split" / f"checkpoint-{STEPS}")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Another world size cannot resume this state.
    res = subprocess.run([str(ftd_train), "launch", "--nproc", "2", "--", "train", "--spec", str(spec), "--resume"],
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    assert res.returncode != 0
    assert "resuming needs the same layout" in res.stdout, res.stdout


@pytest.mark.parametrize("precision", ["compact", "compact_sr"])
def test_compact_bf16_two_ranks_equal_one_process_and_resume(ftd_train, workdir, precision):
    """The default policy on bf16 parameters (compact: exact fp32 masters, 8-bit moments), and
    compact_sr (bf16 weights rounded stochastically, each element with the bits of its offset in
    the whole parameter), with 2 ranks, ep 2 (dense weights and moments in ZeRO slices, each rank's
    experts in its own AdamW) train as one process does, and a run stopped at step 3 resumes to
    the same end."""
    def spec(name, **top):
        s = json.loads(write_spec(workdir, f"{precision}_{name}").read_text())
        s.update(dtype="bf16", precision=precision, **top)
        path = workdir / f"{precision}_{name}.json"
        path.write_text(json.dumps(s))
        return path

    one = train_single(ftd_train, spec("one"))
    two = train_launch(ftd_train, spec("two", parallelism={"ep_size": 2}), nproc=2)
    assert f"precision {precision}" in two.stdout, two.stdout
    ref, ours = losses(one.stdout), losses(two.stdout)
    assert len(ref) == len(ours) == STEPS, two.stdout
    # bf16 activations: the ranks sum the same gradients in another order.
    assert max(abs(a - b) for a, b in zip(ours, ref)) <= 2e-3 * max(ref), f"{ours}\n{ref}"
    a = load_checkpoint(workdir / f"{precision}_one" / f"checkpoint-{STEPS}")
    b = load_checkpoint(workdir / f"{precision}_two" / f"checkpoint-{STEPS}")
    init = load_checkpoint(workdir / "model")
    moved = sum(float((a[k].float() - init[k].float()).norm()) for k in a)
    differ = sum(float((a[k].float() - b[k].float()).norm()) for k in a)
    assert moved > 0 and differ <= 0.05 * moved, (differ, moved)
    # Stop after 3 steps, resume for the rest: the same checkpoint as the uninterrupted 2-rank run.
    stopped = train_launch(ftd_train, spec("resume", parallelism={"ep_size": 2}), "--stop-after", "3", nproc=2)
    assert len(losses(stopped.stdout)) == 3, stopped.stdout
    resumed = train_launch(ftd_train, workdir / f"{precision}_resume.json", "--resume", nproc=2)
    assert losses(resumed.stdout) == losses(two.stdout)[3:], resumed.stdout
    c = load_checkpoint(workdir / f"{precision}_resume" / f"checkpoint-{STEPS}")
    assert all(torch.equal(b[k], c[k]) for k in b)


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
            assert re.search(rf"error: rank {r}/4: .*(collective|failed)", err), \
                f"rank {r} (exit {procs[r].returncode}): {err}"
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
            assert not process_running(pid), pid
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint(ftd_train, workdir):
    spec = write_spec(workdir, "sigterm", max_steps=100000)
    metrics = workdir / "sigterm.metrics.jsonl"
    proc = subprocess.Popen([str(ftd_train), "train", "--spec", str(spec), "--metrics-out", str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        wait_for_step(proc, 2, timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        m = re.search(r"stopped by SIGTERM after step (\d+); resume from (\S+)", err)
        assert m, err
        step = int(m.group(1))
        assert step >= 2 and m.group(2) == str(workdir / "sigterm" / f"checkpoint-{step}")
        lines = read_metrics(metrics)
        assert [x["step"] for x in lines if x["event"] == "step"] == list(range(1, step + 1))
        assert lines[-1] == {"event": "checkpoint", "step": step, "path": m.group(2)}  # no "done": not finished
        assert (workdir / "sigterm" / f"checkpoint-{step}" / "training_state" / "trainer_state.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
