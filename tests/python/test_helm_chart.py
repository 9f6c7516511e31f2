"""helm/ftd renders, lints and produces valid, secure Kubernetes objects.

Rendering and linting use Helm's own Go engine through helm-python-sdk (the equivalent of
`helm template` and `helm lint --strict`; no package ships the helm binary here), and every
rendered object is checked against the Kubernetes OpenAPI schemas by kubernetes-validate
(the equivalent of kubeconform). A structural test checks the template sources themselves.
"""
import base64
import json
import pathlib
import re
import sys

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ftd"
TEMPLATES = CHART / "templates"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
# The chart's minimum (Chart.yaml kubeVersion) and the newest schemas available.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]
RELEASE, NAMESPACE = "rel", "ml"
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def render(values=None):
    """Renders the chart; returns {template path: [objects]} without empty documents."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        if docs:
            out[path.split("/templates/", 1)[1]] = docs
    return out


def notes(values=None):
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def objects(rendered):
    return [doc for docs in rendered.values() for doc in docs]


def by_kind(rendered, kind):
    return [o for o in objects(rendered) if o["kind"] == kind]


def one(rendered, kind, name_suffix=""):
    found = [o for o in by_kind(rendered, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def container_env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


VARIANTS = {"defaults": {}}
VARIANTS.update({p.stem: load_yaml(p) for p in EXAMPLES})
VARIANTS["daemonset-monitors-tls"] = {
    "worker": {"kind": "DaemonSet"},
    "metrics": {"assumePrometheusOperator": True, "serviceMonitor": {"enabled": False},
                "podMonitor": {"enabled": True}},
    "tls": {"enabled": True, "cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"},
}
VARIANTS["coordinator-only"] = {"worker": {"enabled": False}, "metrics": {"assumePrometheusOperator": True}}


# ---------------------------------------------------------------------------------------------
# helm lint --strict, helm template, kubeconform-style validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict_passes(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 1 is INFO ("icon is recommended"); --strict fails on warnings (2) and errors (3).
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_catches_a_broken_chart(tmp_path):
    """The lint call really runs Helm's linter: a chart missing its version fails it."""
    broken = tmp_path / "ftd"
    broken.mkdir()
    (broken / "Chart.yaml").write_text("apiVersion: v2\nname: ftd\n")
    (broken / "values.yaml").write_text("{}\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"] or any(m["severity"] >= 3 for m in report["messages"])


def test_lint_applies_the_values_schema():
    """Values given to lint reach it: a schema violation is a lint error."""
    report = helm.lint(CHART, {"image": {"tag": "latest"}}, strict=True)
    assert any("/image/tag" in e for e in report["errors"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_match_kubernetes_schemas(variant):
    rendered = render(VARIANTS[variant])
    checked = 0
    for obj in objects(rendered):
        assert obj["metadata"]["namespace"] == NAMESPACE or obj["kind"] == "ConfigMap"
        assert len(obj["metadata"]["name"]) <= 63
        if obj["kind"] in OPERATOR_KINDS:
            continue  # CRDs: checked in test_prometheus_operator_objects
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 8


def test_schema_validation_catches_a_bad_object():
    """kubernetes-validate rejects what kubeconform would (so the test above can fail)."""
    svc = one(render(), "Service", "-coordinator")
    svc["spec"]["ports"][0]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, KUBE_VERSIONS[0], strict=True)


def test_default_render_has_every_component():
    rendered = render()
    kinds = sorted(o["kind"] for o in objects(rendered))
    assert kinds == sorted(["ServiceAccount", "Secret", "StatefulSet", "StatefulSet", "Service",
                            "Service", "Service", "NetworkPolicy", "NetworkPolicy",
                            "PodDisruptionBudget", "ConfigMap", "Pod"])


# ---------------------------------------------------------------------------------------------
# Coordinator
# ---------------------------------------------------------------------------------------------

def test_coordinator_statefulset_command_probes_and_storage():
    rendered = render()
    sts = one(rendered, "StatefulSet", "-coordinator")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == f"{RELEASE}-ftd-coordinator-headless"
    (c,) = pod_spec(sts)["containers"]
    assert c["command"] == ["ftd"]
    assert c["args"][:4] == ["--data-dir=/var/lib/ftd", "--grpc-listen=0.0.0.0:50051",
                             "--http-listen=0.0.0.0:8080", "--tokens-file=/etc/ftd/auth/tokens"]
    assert not any(a.startswith("--tls-") for a in c["args"])
    assert c["livenessProbe"]["grpc"] == {"port": 50051}
    assert c["startupProbe"]["grpc"] == {"port": 50051}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 600
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/var/lib/ftd"]["name"] == "data"
    assert mounts["/etc/ftd/auth"]["readOnly"] is True
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    auth = next(v for v in pod_spec(sts)["volumes"] if v["name"] == "auth")
    assert auth["secret"]["secretName"] == f"{RELEASE}-ftd-tokens"


def test_coordinator_optional_flags_and_existing_claim():
    rendered = render({"coordinator": {"modelRoot": "/models", "sharedModelRoot": "/base-models", "dataRoot": "/data",
                                       "extraArgs": ["--log-level=debug"],
                                       "persistence": {"existingClaim": "ftd-store"}}})
    sts = one(rendered, "StatefulSet", "-coordinator")
    args = pod_spec(sts)["containers"][0]["args"]
    assert "--model-root=/models" in args and "--data-root=/data" in args
    assert "--shared-model-root=/base-models" in args
    assert args[-1] == "--log-level=debug"
    assert "volumeClaimTemplates" not in sts["spec"]
    data = next(v for v in pod_spec(sts)["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"] == {"claimName": "ftd-store"}


def test_coordinator_without_persistence_uses_emptydir():
    sts = one(render({"coordinator": {"persistence": {"enabled": False}}}), "StatefulSet", "-coordinator")
    assert "volumeClaimTemplates" not in sts["spec"]
    data = next(v for v in pod_spec(sts)["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "emptyDir": {}}


def test_coordinator_services_expose_grpc_and_http():
    rendered = render({"coordinator": {"grpcPort": 6000, "httpPort": 6001}})
    svc = one(rendered, "Service", "-coordinator")
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {("grpc", 6000), ("http", 6001)}
    headless = one(rendered, "Service", "-coordinator-headless")
    assert headless["spec"]["clusterIP"] == "None"
    (c,) = pod_spec(one(rendered, "StatefulSet", "-coordinator"))["containers"]
    assert "--grpc-listen=0.0.0.0:6000" in c["args"] and "--http-listen=0.0.0.0:6001" in c["args"]
    assert c["livenessProbe"]["grpc"] == {"port": 6000}


def test_tls_mounts_the_secret_and_probes_over_http():
    variant = VARIANTS["daemonset-monitors-tls"]
    rendered = render(variant)
    tls = one(rendered, "Secret", "-tls")
    assert tls["type"] == "kubernetes.io/tls"
    assert base64.b64decode(tls["data"]["tls.crt"]).decode() == variant["tls"]["cert"]
    (c,) = pod_spec(one(rendered, "StatefulSet", "-coordinator"))["containers"]
    assert "--tls-cert=/etc/ftd/tls/tls.crt" in c["args"] and "--tls-key=/etc/ftd/tls/tls.key" in c["args"]
    # Kubernetes gRPC probes cannot do TLS.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "grpc" not in c["startupProbe"]
    # An existing Secret is used as is.
    rendered = render({"tls": {"enabled": True, "existingSecret": "my-tls"}})
    assert not [s for s in by_kind(rendered, "Secret") if s["metadata"]["name"].endswith("-tls")]
    sts = one(rendered, "StatefulSet", "-coordinator")
    tls_volume = next(v for v in pod_spec(sts)["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == "my-tls"


def test_tls_without_certificate_fails_to_render():
    with pytest.raises(helm.HelmError):
        render({"tls": {"enabled": True}})


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------

def token_lines(secret):
    text = secret["stringData"]["tokens"]
    return [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_tokens_file_lists_the_worker_and_api_tokens():
    tokens = [{"token": "user-token-0123456789", "tenant": "acme", "role": "user"},
              {"token": "admin-token-0123456789", "tenant": "ops", "role": "admin"}]
    rendered = render({"auth": {"tokens": tokens, "workerToken": "worker-token-0123456789"}})
    secret = one(rendered, "Secret", "-tokens")
    assert token_lines(secret) == [["worker-token-0123456789", "workers", "admin"],
                                   ["user-token-0123456789", "acme", "user"],
                                   ["admin-token-0123456789", "ops", "admin"]]
    assert secret["stringData"]["worker-token"] == "worker-token-0123456789"
    assert "admin-token" not in secret["stringData"]


def test_tokens_are_generated_when_not_given():
    first = one(render(), "Secret", "-tokens")
    lines = token_lines(first)
    assert [line[1:] for line in lines] == [["workers", "admin"], ["default", "admin"]]
    assert all(re.fullmatch(r"[A-Za-z0-9]{48}", line[0]) for line in lines)
    assert first["stringData"]["worker-token"] == lines[0][0]
    assert first["stringData"]["admin-token"] == lines[1][0]
    second = one(render(), "Secret", "-tokens")
    assert second["stringData"]["worker-token"] != first["stringData"]["worker-token"]


def test_existing_token_secret_is_used_by_both_sides():
    rendered = render({"auth": {"existingSecret": "corp-tokens"}})
    assert not by_kind(rendered, "Secret")
    coord = pod_spec(one(rendered, "StatefulSet", "-coordinator"))
    worker = pod_spec(one(rendered, "StatefulSet", "-worker"))
    assert next(v for v in coord["volumes"] if v["name"] == "auth")["secret"]["secretName"] == "corp-tokens"
    token = next(v for v in worker["volumes"] if v["name"] == "worker-token")["secret"]
    assert token["secretName"] == "corp-tokens"
    assert token["items"] == [{"key": "worker-token", "path": "worker-token"}]


@pytest.mark.parametrize("values,message", [
    ({"auth": {"workerToken": "same-token-0123456789",
               "tokens": [{"token": "same-token-0123456789", "tenant": "a", "role": "user"}]}},
     "equals auth.workerToken"),
    ({"auth": {"tokens": [{"token": "dup-token-0123456789", "tenant": "a", "role": "user"},
                          {"token": "dup-token-0123456789", "tenant": "b", "role": "admin"}]}},
     "tokens must be unique"),
    ({"coordinator": {"grpcPort": 8080}}, "must differ"),
    ({"worker": {"rendezvousPort": 50051}}, "rendezvousPort must differ"),
])
def test_cross_field_errors_fail_the_render(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------

def test_gpu_worker_statefulset():
    rendered = render({"worker": {"replicas": 3}})
    sts = one(rendered, "StatefulSet", "-worker")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == f"{RELEASE}-ftd-worker"
    spec = pod_spec(sts)
    (c,) = spec["containers"]
    assert c["command"] == ["ftd-worker"]
    assert c["args"] == [f"--coordinator={RELEASE}-ftd-coordinator.{NAMESPACE}.svc.cluster.local:50051",
                         "--token-file=/etc/ftd/worker/worker-token", "--name=$(POD_NAME)"]
    env = container_env(c)
    assert env["NCCL_NVLS_ENABLE"] == "0"
    assert env["MASTER_PORT"] == "29500"
    assert env["FTD_ADVERTISE_ADDR"] == f"$(POD_NAME).{RELEASE}-ftd-worker.{NAMESPACE}.svc.cluster.local"
    pod_name = next(e for e in c["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert "hostNetwork" not in spec
    headless = one(rendered, "Service", "-worker")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]


def test_cpu_worker_offers_slots_and_no_gpus():
    sts = one(render(VARIANTS["cpu-local"]), "StatefulSet", "-worker")
    (c,) = pod_spec(sts)["containers"]
    assert "--slots=2" in c["args"]
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "nodeSelector" not in pod_spec(sts) and "tolerations" not in pod_spec(sts)


def test_nccl_environment_is_configurable_but_nvls_stays_off():
    values = {"worker": {"nccl": {"socketIfname": "eth0", "ibHca": "mlx5_0", "debug": "INFO",
                                  "extraEnv": {"NCCL_IB_GID_INDEX": 3}}}}
    env_list = pod_spec(one(render(values), "StatefulSet", "-worker"))["containers"][0]["env"]
    env = {e["name"]: e.get("value") for e in env_list}
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert env["NCCL_IB_HCA"] == "mlx5_0"
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["NCCL_IB_GID_INDEX"] == "3"
    assert [e["name"] for e in env_list].count("NCCL_NVLS_ENABLE") == 1
    assert env["NCCL_NVLS_ENABLE"] == "0"


def test_rdma_workers_use_host_network_ipc_lock_and_rdma_devices():
    rendered = render(VARIANTS["multi-node-rdma"])
    sts = one(rendered, "StatefulSet", "-worker")
    spec = pod_spec(sts)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (c,) = spec["containers"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert sts["spec"]["replicas"] == 4
    image = c["image"]
    assert image.startswith("registry.example.com/ml/ftd@sha256:")
    # Without rdma.ipcLock no capability is added.
    plain = pod_spec(one(render(), "StatefulSet", "-worker"))["containers"][0]
    assert "add" not in plain["securityContext"]["capabilities"]


def test_daemonset_workers_get_dns_names_through_subdomain():
    rendered = render(VARIANTS["daemonset-monitors-tls"])
    ds = one(rendered, "DaemonSet", "-worker")
    assert "replicas" not in ds["spec"]
    assert pod_spec(ds)["subdomain"] == f"{RELEASE}-ftd-worker"
    assert not [s for s in by_kind(rendered, "StatefulSet") if s["metadata"]["name"].endswith("-worker")]


def test_coordinator_only_install_has_no_worker_objects():
    rendered = render(VARIANTS["coordinator-only"])
    assert not [o for o in objects(rendered) if o["metadata"]["name"].endswith("-worker")]
    assert len(by_kind(rendered, "NetworkPolicy")) == 1
    assert "No workers are deployed" in notes(VARIANTS["coordinator-only"])


def test_worker_pdb_selects_the_workers():
    rendered = render({"worker": {"podDisruptionBudget": {"maxUnavailable": "25%"}}})
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == "25%"
    sts = one(rendered, "StatefulSet", "-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert not by_kind(render({"worker": {"podDisruptionBudget": {"enabled": False}}}), "PodDisruptionBudget")


# ---------------------------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_is_locked_down(variant):
    rendered = render(VARIANTS[variant])
    pods = [o["spec"] if o["kind"] == "Pod" else pod_spec(o)
            for o in objects(rendered) if o["kind"] in {"Pod", "StatefulSet", "DaemonSet"}]
    assert pods
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert set(sc["capabilities"].get("add", [])) <= {"IPC_LOCK"}
            assert not c["image"].endswith(":latest")


def test_network_policies():
    rendered = render(VARIANTS["multi-node-rdma"] | {"worker": {**VARIANTS["multi-node-rdma"]["worker"],
                                                                "rdma": {"hostNetwork": False, "ipcLock": False}}})
    coord = one(rendered, "NetworkPolicy", "-coordinator")
    api_rule, metrics_rule = coord["spec"]["ingress"]
    assert {p["port"] for p in api_rule["ports"]} == {"grpc", "http"}
    peers = api_rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ml-platform"}}} in peers
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "worker"
               for p in peers)
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "test"
               for p in peers)
    assert not any("ipBlock" in p for p in peers)
    assert metrics_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    worker = one(rendered, "NetworkPolicy", "-worker")
    (rule,) = worker["spec"]["ingress"]
    assert rule == {"from": [{"podSelector": worker["spec"]["podSelector"]}]}
    # Default: the API ports are open to any client.
    default_rule = one(render(), "NetworkPolicy", "-coordinator")["spec"]["ingress"][0]
    assert "from" not in default_rule
    assert not by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# ---------------------------------------------------------------------------------------------
# Monitoring, dashboard, helm test, NOTES
# ---------------------------------------------------------------------------------------------

def test_monitors_need_the_prometheus_operator_api():
    # Offline rendering does not see monitoring.coreos.com/v1: nothing is created, NOTES say so.
    assert not by_kind(render(), "ServiceMonitor")
    assert "monitoring.coreos.com/v1) was not found" in notes()


def test_prometheus_operator_objects():
    rendered = render({"metrics": {"assumePrometheusOperator": True,
                                   "serviceMonitor": {"labels": {"release": "kps"}}}})
    sm = one(rendered, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "scheme": "http",
                                        "interval": "15s", "scrapeTimeout": "10s"}]
    # It matches the ClusterIP Service only, not the headless one (no double scrape).
    selector = sm["spec"]["selector"]
    matched = [s["metadata"]["name"] for s in by_kind(rendered, "Service")
               if all(s["metadata"]["labels"].get(k) == v for k, v in selector["matchLabels"].items())
               and all(s["metadata"]["labels"].get(e["key"]) in e["values"] for e in selector["matchExpressions"])]
    assert matched == [f"{RELEASE}-ftd-coordinator"]
    assert not by_kind(rendered, "PodMonitor")
    pm = one(render(VARIANTS["daemonset-monitors-tls"]), "PodMonitor")
    coord = one(render(), "StatefulSet", "-coordinator")
    assert pm["spec"]["selector"]["matchLabels"] == coord["spec"]["selector"]["matchLabels"]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_grafana_dashboard_configmap_embeds_the_dashboard():
    cm = one(render({"grafana": {"dashboards": {"namespace": "monitoring"}}}), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    embedded = json.loads(cm["data"]["ftd-dashboard.json"])
    on_disk = json.loads((CHART / "dashboards" / "ftd-dashboard.json").read_text(encoding="utf-8"))
    assert embedded == on_disk
    assert not by_kind(render({"grafana": {"dashboards": {"enabled": False}}}), "ConfigMap")


def test_chart_dashboard_is_the_deploy_dashboard():
    """helm/ftd/dashboards/ftd-dashboard.json is a copy of deploy/grafana/ftd-dashboard.json
    (`.Files.Get` sees only the chart directory). After editing the dashboard, run
    `deploy/sync-dashboard.sh`."""
    chart_copy = CHART / "dashboards" / "ftd-dashboard.json"
    dashboard = json.loads(chart_copy.read_text(encoding="utf-8"))
    assert dashboard["title"] and isinstance(dashboard["panels"], list) and dashboard["panels"]
    source = REPO / "deploy" / "grafana" / "ftd-dashboard.json"
    if source.exists():
        assert chart_copy.read_bytes() == source.read_bytes(), \
            "helm/ftd/dashboards/ftd-dashboard.json differs from deploy/grafana/: run deploy/sync-dashboard.sh"


def test_helm_test_hook_calls_health_endpoints():
    pod = one(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["curl"]
    base = f"http://{RELEASE}-ftd-coordinator:8080"
    assert c["args"][-2:] == [f"{base}/healthz", f"{base}/readyz"]
    assert "--fail" in c["args"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert not by_kind(render({"helmTest": {"enabled": False}}), "Pod")


def test_image_reference():
    c = pod_spec(one(render(), "StatefulSet", "-coordinator"))["containers"][0]
    assert c["image"] == "ftd:0.1.0"  # the chart's appVersion
    c = pod_spec(one(render({"image": {"repository": "r.io/ftd", "tag": "1.2.3"}}),
                     "StatefulSet", "-coordinator"))["containers"][0]
    assert c["image"] == "r.io/ftd:1.2.3"


def test_names_stay_within_dns_limits():
    long_release_values = {"fullnameOverride": "a" * 63}
    for obj in objects(render(long_release_values)):
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]


def test_notes_mention_the_endpoints():
    text = notes()
    assert f"{RELEASE}-ftd-coordinator.{NAMESPACE}.svc.cluster.local:50051" in text
    assert "admin-token" in text
    assert "helm test rel" in text


# ---------------------------------------------------------------------------------------------
# Structural checks on the template sources
# ---------------------------------------------------------------------------------------------

def template_sources():
    return {p: p.read_text(encoding="utf-8") for p in sorted(TEMPLATES.rglob("*")) if p.is_file()}


def has_path(values, dotted):
    node = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def schema_node(schema, dotted):
    node = schema
    for key in dotted.split("."):
        node = node["properties"][key]
    return node


def test_templates_reference_only_defined_values():
    """Every .Values.a.b exists in values.yaml; so does $v.x.y where `$v := .Values.a`; and for
    `range $item := .Values.list`, $item.field is a property of the list items' schema."""
    values = load_yaml(CHART / "values.yaml")
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    missing, seen = [], 0
    for path, text in template_sources().items():
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            seen += 1
            if not has_path(values, ref.rstrip(".")):
                missing.append(f"{path.name}: .Values.{ref}")
        ranged = re.findall(r"range\s+(?:\$\w+\s*,\s*)?\$(\w+)\s*:=\s*\.Values\.([A-Za-z0-9_.]+)", text)
        for var, base in ranged:
            item_properties = schema_node(schema, base)["items"]["properties"]
            for ref in re.findall(r"\$" + var + r"\.([A-Za-z0-9_]+)", text):
                seen += 1
                if ref not in item_properties:
                    missing.append(f"{path.name}: ${var}.{ref} (an item of .Values.{base})")
        ranged_vars = {var for var, _ in ranged}
        for var, base in re.findall(r"\$(\w+)\s*:=\s*\.Values\.([A-Za-z0-9_.]+)", text):
            if var in ranged_vars:
                continue
            for ref in re.findall(r"\$" + var + r"\.([A-Za-z0-9_.]+)", text):
                seen += 1
                if not has_path(values, f"{base}.{ref}".rstrip(".")):
                    missing.append(f"{path.name}: ${var}.{ref} (.Values.{base}.{ref})")
    assert seen > 100
    assert missing == []


def test_structural_check_detects_an_undefined_value(tmp_path, monkeypatch):
    """The reference check above fails on a template that uses a value values.yaml lacks."""
    fake = tmp_path / "templates"
    fake.mkdir()
    (fake / "cm.yaml").write_text("{{ .Values.coordinator.grpcPortt }}\n" * 101)
    monkeypatch.setattr(sys.modules[__name__], "TEMPLATES", fake)
    with pytest.raises(AssertionError, match="grpcPortt"):
        test_templates_reference_only_defined_values()


def test_templates_include_only_defined_helpers():
    sources = template_sources()
    defined = set()
    for text in sources.values():
        defined |= set(re.findall(r'{{-?\s*define\s+"([^"]+)"', text))
    assert {"ftd.fullname", "ftd.labels", "ftd.selectorLabels"} <= defined
    used = {}
    for path, text in sources.items():
        for name in re.findall(r'(?:include|template)\s+"([^"]+)"', text):
            used.setdefault(name, path.name)
    undefined = {name: where for name, where in used.items() if name not in defined}
    assert undefined == {}
    unused = defined - set(used)
    assert unused == set(), f"helpers never used: {unused}"


def test_files_get_paths_exist():
    for path, text in template_sources().items():
        for ref in re.findall(r'\.Files\.Get\s+"([^"]+)"', text):
            assert (CHART / ref).is_file(), f"{path.name}: .Files.Get {ref}"


def test_labels_follow_kubernetes_recommendations():
    for obj in objects(render()):
        labels = obj["metadata"]["labels"]
        for key in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"]:
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks {key}"


def test_packaged_chart_carries_the_dashboard_and_renders(tmp_path):
    """`helm package`: the archive holds the dashboard and schema (not the examples) and renders."""
    import tarfile
    archive = helm.package(CHART, destination=tmp_path)
    names = set(tarfile.open(archive).getnames())
    assert {"ftd/dashboards/ftd-dashboard.json", "ftd/values.schema.json", "ftd/Chart.yaml"} <= names
    assert not [n for n in names if n.startswith("ftd/examples/")]
    with helm.Chart.load_archive(pathlib.Path(archive).read_bytes()) as chart:
        manifests = chart.render({}, name=RELEASE, namespace=NAMESPACE)
    assert "grafana_dashboard" in manifests["ftd/templates/grafana-dashboard.yaml"]
