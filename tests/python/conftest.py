"""Shared fixtures: where the built binaries are, and skipping when they are not built."""
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def build_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("FTD_BUILD_DIR", ROOT / "build"))
    return d if d.is_absolute() else ROOT / d


def binary(name: str) -> pathlib.Path:
    return build_dir() / "bin" / name


@pytest.fixture(scope="session")
def ftd_train():
    path = binary("ftd-train")
    if not path.exists():
        pytest.skip(f"{path} is not built (build the engine first)")
    return path


def run(cmd, **kw):
    """Runs a command, failing the test with its output when it fails."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


# Below Linux's ephemeral range (32768-60999): a port picked there can, once its daemon is
# stopped for a restart, become the source port of some outgoing connection (even of a client
# reconnecting to it), so that the restarted daemon shares or loses it.
_FIXED_PORTS = (20000, 32000)


def free_port():
    """A TCP port free on loopback now, outside the ephemeral range (the daemon under test
    binds it next, and again when it restarts)."""
    rnd = random.Random()
    for _ in range(1000):
        port = rnd.randrange(*_FIXED_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_FIXED_PORTS}")


def rendezvous_port_base():
    """A --rendezvous-port-base for a test coordinator: its own stretch of the fixed range, so that
    test runs side by side on one host do not hand their gangs the same MASTER_PORT (the
    default base 29500 would)."""
    return random.Random().randrange(_FIXED_PORTS[0], _FIXED_PORTS[1] - 2000, 50)


def wait_for(what, cond, timeout=120.0, interval=0.1):
    """Polls cond() until it returns something truthy (returned), or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def train_bpe_tokenizer(corpus, vocab_size, specials):
    """A byte-level BPE tokenizer (Qwen-style Split + ByteLevel pre-tokenizer) trained by the
    `tokenizers` library on `corpus`, with `specials` as special tokens; for tiny test models."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s?\p{L}+|\s?\p{N}|\s?[^\s\p{L}\p{N}]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[AddedToken(t, special=True) for t in specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def process_running(pid):
    """Whether pid is a live process (neither gone nor a zombie); it may exit while we look."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


DIST_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra):
    """The environment for an `ftd-train` child: no inherited rendezvous variables, one OpenMP
    thread per process (ranks share two cores in CI), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV_KEYS}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def client_python(tmp_path_factory):
    """The Python of a fresh virtual environment where `pip install ./client/python` (the
    ftd-client package, as a user installs it) was done."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "./client/python"], cwd=ROOT)
    # Only grpcio and protobuf (and what they need) came along.
    installed = json.loads(run([py, "-m", "pip", "list", "--format", "json"]).stdout)
    names = {p["name"].lower() for p in installed}
    assert {"ftd-client", "grpcio", "protobuf"} <= names, names
    assert not names & {"googleapis-common-protos", "grpcio-tools", "pyyaml"}, names
    return py
