"""helm/ftd/values.schema.json: the defaults and every example validate; bad values are rejected.

Validation runs twice: with the `jsonschema` package on values merged the way Helm merges them,
and with Helm's own validator (helm-python-sdk binds Helm's Go library), which is what
`helm install/upgrade` runs, so the two must agree.
"""
import copy
import json
import pathlib

import helm_python as helm
import jsonschema
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ftd"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def helm_merge(base, override):
    """Helm's coalescing: maps merge key by key, anything else (lists too) replaces, null deletes."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@pytest.fixture(scope="module")
def schema():
    with open(CHART / "values.schema.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def defaults():
    return load_yaml(CHART / "values.yaml")


def schema_errors(schema, values):
    validator = jsonschema.Draft7Validator(schema)
    return sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))


def helm_rejects(values):
    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as e:
            return str(e)
    return None


def test_schema_is_a_valid_draft7_schema(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def test_default_values_validate(schema, defaults):
    assert schema_errors(schema, defaults) == []
    assert helm_rejects({}) is None


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"cpu-local.yaml", "h100-8gpu.yaml", "multi-node-rdma.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(schema, defaults, example):
    override = load_yaml(example)
    assert override, f"{example.name} is empty"
    errors = schema_errors(schema, helm_merge(defaults, override))
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    assert helm_rejects(override) is None


def test_helm_merge_follows_helm(defaults):
    """The merge used above agrees with Helm's own (lists replace, maps merge, null deletes)."""
    override = {"worker": {"tolerations": [], "nodeSelector": None, "nccl": {"debug": "INFO"}}}
    ours = helm_merge(defaults, override)
    with helm.Chart.load(CHART) as chart:
        theirs = chart.merge_values(override)
    assert ours["worker"] == theirs["worker"]
    assert ours["worker"]["tolerations"] == []
    assert "nodeSelector" not in ours["worker"]
    assert ours["worker"]["nccl"]["socketIfname"] == defaults["worker"]["nccl"]["socketIfname"]


# Each case: an override that must be rejected, and the path the error must point at.
INVALID = {
    "latest_tag": ({"image": {"tag": "latest"}}, ["image", "tag"]),
    "tag_with_space": ({"image": {"tag": "v1 beta"}}, ["image", "tag"]),
    "bad_digest": ({"image": {"digest": "sha256:abc"}}, ["image", "digest"]),
    "bad_pull_policy": ({"image": {"pullPolicy": "Sometimes"}}, ["image", "pullPolicy"]),
    "unknown_top_level_key": ({"workers": {"replicas": 2}}, []),
    "typo_in_worker_key": ({"worker": {"gpuPerNode": 8}}, ["worker"]),
    "token_role_unknown": (
        {"auth": {"tokens": [{"token": "a" * 32, "tenant": "acme", "role": "root"}]}},
        ["auth", "tokens", 0, "role"]),
    "token_with_space": (
        {"auth": {"tokens": [{"token": "abc def ghi jkl mno", "tenant": "acme", "role": "user"}]}},
        ["auth", "tokens", 0, "token"]),
    "token_too_short": (
        {"auth": {"tokens": [{"token": "short", "tenant": "acme", "role": "user"}]}},
        ["auth", "tokens", 0, "token"]),
    "token_missing_tenant": ({"auth": {"tokens": [{"token": "a" * 32, "role": "user"}]}},
                             ["auth", "tokens", 0]),
    "worker_token_too_short": ({"auth": {"workerToken": "abc"}}, ["auth", "workerToken"]),
    "tls_without_certificate": ({"tls": {"enabled": True}}, ["tls", "cert"]),
    "tls_cert_not_pem": ({"tls": {"enabled": True, "cert": "hello", "key": "world"}}, ["tls", "cert"]),
    "port_out_of_range": ({"coordinator": {"grpcPort": 70000}}, ["coordinator", "grpcPort"]),
    "port_as_string": ({"coordinator": {"httpPort": "8080"}}, ["coordinator", "httpPort"]),
    "relative_model_root": ({"coordinator": {"modelRoot": "models"}}, ["coordinator", "modelRoot"]),
    "bad_pvc_size": ({"coordinator": {"persistence": {"size": "ten gigs"}}},
                     ["coordinator", "persistence", "size"]),
    "bad_access_mode": ({"coordinator": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}},
                        ["coordinator", "persistence", "accessModes", 0]),
    "worker_kind_deployment": ({"worker": {"kind": "Deployment"}}, ["worker", "kind"]),
    "negative_gpus": ({"worker": {"gpusPerNode": -1}}, ["worker", "gpusPerNode"]),
    "zero_slots": ({"worker": {"slots": 0}}, ["worker", "slots"]),
    "bad_shm_size": ({"worker": {"shmSize": "lots"}}, ["worker", "shmSize"]),
    "nvls_cannot_be_enabled": ({"worker": {"nccl": {"extraEnv": {"NCCL_NVLS_ENABLE": "1"}}}},
                               ["worker", "nccl", "extraEnv"]),
    "non_nccl_variable_in_nccl_env": ({"worker": {"nccl": {"extraEnv": {"LD_PRELOAD": "/x.so"}}}},
                                      ["worker", "nccl", "extraEnv"]),
    "nccl_debug_unknown": ({"worker": {"nccl": {"debug": "LOUD"}}}, ["worker", "nccl", "debug"]),
    "ifname_with_space": ({"worker": {"nccl": {"socketIfname": "eth0 eth1"}}},
                          ["worker", "nccl", "socketIfname"]),
    "pdb_bad_percentage": ({"worker": {"podDisruptionBudget": {"maxUnavailable": "half"}}},
                           ["worker", "podDisruptionBudget", "maxUnavailable"]),
    "both_monitors": ({"metrics": {"podMonitor": {"enabled": True}}}, ["metrics"]),
    "bad_scrape_interval": ({"metrics": {"serviceMonitor": {"interval": "15 seconds"}}},
                            ["metrics", "serviceMonitor", "interval"]),
    "run_as_root_allowed": ({"podSecurityContext": {"runAsNonRoot": False}},
                            ["podSecurityContext", "runAsNonRoot"]),
    "run_as_uid_0": ({"podSecurityContext": {"runAsUser": 0}}, ["podSecurityContext", "runAsUser"]),
    "writable_root_fs": ({"securityContext": {"readOnlyRootFilesystem": False}},
                         ["securityContext", "readOnlyRootFilesystem"]),
    "privilege_escalation": ({"securityContext": {"allowPrivilegeEscalation": True}},
                             ["securityContext", "allowPrivilegeEscalation"]),
    "capabilities_not_dropped": ({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
                                 ["securityContext", "capabilities", "drop"]),
    "capabilities_added": ({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}},
                           ["securityContext", "capabilities", "add"]),
    "privileged": ({"securityContext": {"privileged": True}}, ["securityContext", "privileged"]),
    "env_var_without_name": ({"coordinator": {"extraEnv": [{"value": "x"}]}},
                             ["coordinator", "extraEnv", 0]),
    "upper_case_fullname": ({"fullnameOverride": "My-FTD"}, ["fullnameOverride"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_values_are_rejected(schema, defaults, case):
    override, path = INVALID[case]
    errors = schema_errors(schema, helm_merge(defaults, override))
    assert errors, f"{case}: accepted by the schema"
    paths = [list(e.absolute_path) for e in errors]
    assert path in paths, f"{case}: errors at {paths}, expected one at {path}"
    assert helm_rejects(override), f"{case}: accepted by Helm's validator"


def test_valid_edge_values_are_accepted(schema, defaults):
    """The constraints above are not so tight that legitimate settings fail."""
    override = {
        "image": {"tag": "0.1.0-rc.1", "digest": "sha256:" + "ab" * 32},
        "auth": {"tokens": [{"token": "tok_" + "x" * 20, "tenant": "team-a.prod", "role": "admin"}],
                 "workerToken": "w" * 16},
        "tls": {"enabled": True, "existingSecret": "grpc-tls"},
        "coordinator": {"persistence": {"size": "1.5Ti", "accessModes": ["ReadWriteOncePod"]}},
        "worker": {"kind": "DaemonSet", "gpusPerNode": 0, "slots": 4, "shmSize": "512Mi",
                   "nccl": {"extraEnv": {"NCCL_IB_GID_INDEX": 3, "NCCL_P2P_LEVEL": "NVL"}},
                   "podDisruptionBudget": {"enabled": True, "maxUnavailable": "25%"},
                   "rdma": {"hostNetwork": True, "ipcLock": True,
                            "resources": {"rdma/hca_shared_devices_a": 1}}},
        "metrics": {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": True}},
    }
    assert schema_errors(schema, helm_merge(defaults, override)) == []
    assert helm_rejects(override) is None
