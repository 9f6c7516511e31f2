"""The Grafana dashboard (deploy/grafana/ftd-dashboard.json) and its provisioning files, checked
without a coordinator: rows, layout, data source, PromQL syntax (promtool check rules), the
generator reproducing the JSON, and the PromQL metric-name extractor that
test_metrics_prometheus.py uses to compare the dashboard with a live /metrics scrape."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from metrics_util import dashboard_exprs, promql_metric_names  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "ftd-dashboard.json"
ROWS = ["Jobs overview", "Throughput", "Loss and learning rate", "Memory", "MoE load and all-to-all",
        "Workers and GPUs", "Service health"]


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def rows_with_panels(dashboard):
    rows, current = {}, None
    for p in dashboard["panels"]:
        if p["type"] == "row":
            current = p["title"]
            rows[current] = []
        else:
            assert current is not None, f"panel {p['title']!r} comes before the first row"
            rows[current].append(p)
    return rows


def test_rows_in_order_each_with_panels(dashboard):
    rows = rows_with_panels(dashboard)
    assert list(rows) == ROWS
    for title, panels in rows.items():
        assert panels, f"row {title!r} is empty"


def test_rows_query_what_their_titles_promise(dashboard):
    rows = rows_with_panels(dashboard)

    def names(row):
        return set().union(*(promql_metric_names(t["expr"]) for p in rows[row] for t in p["targets"]))

    assert {"ftd_jobs", "ftd_job_queue_wait_seconds_bucket"} <= names("Jobs overview")
    assert {"ftd_job_tokens_per_second_per_gpu", "ftd_job_model_tflops_per_gpu", "ftd_job_mfu_ratio",
            "ftd_job_step_duration_seconds_bucket"} <= names("Throughput")
    assert {"ftd_job_loss", "ftd_job_eval_loss", "ftd_job_learning_rate", "ftd_job_grad_norm"} <= names("Loss and learning rate")
    assert {"ftd_job_peak_memory_bytes", "ftd_job_reserved_memory_bytes"} <= names("Memory")
    assert {"ftd_job_expert_load_imbalance_ratio", "ftd_job_all_to_all_seconds"} <= names("MoE load and all-to-all")
    workers = names("Workers and GPUs")
    assert {"ftd_workers", "ftd_gpus", "ftd_job_rank_info"} <= workers
    assert any(n.startswith("DCGM_FI_") for n in workers), "no panel joins DCGM exporter metrics"
    assert {"ftd_grpc_requests_total", "ftd_http_requests_total",
            "ftd_store_commit_duration_seconds_bucket"} <= names("Service health")


def test_layout_ids_and_datasource(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    boxes = []
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (p["title"], g)
        for q in boxes:
            overlap = (g["x"] < q["x"] + q["w"] and q["x"] < g["x"] + g["w"] and
                       g["y"] < q["y"] + q["h"] and q["y"] < g["y"] + g["h"])
            assert not overlap, f"{p['title']!r} overlaps another panel at {g}"
        boxes.append(g)
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], f"panel {p['title']!r} has no query"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"tenant", "job_id"} <= set(variables)
    assert dashboard["uid"] == "ftd-overview"


def test_every_expression_is_valid_promql(dashboard, tmp_path):
    """promtool parses each expression (Grafana's variables substituted) as a recording rule."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs(dashboard)):
        e = (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
             .replace("$tenant", ".*").replace("$job_id", ".*"))
        assert "$" not in e.replace('"$1"', ""), f"{title}: unsubstituted variable in {expr}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": e})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


def test_generator_reproduces_the_json(tmp_path):
    out = tmp_path / "dash.json"
    subprocess.run([sys.executable, str(GRAFANA / "generate_dashboard.py"), str(out)], check=True,
                   capture_output=True)
    assert out.read_text() == DASHBOARD.read_text(), \
        "deploy/grafana/ftd-dashboard.json is stale: run deploy/grafana/generate_dashboard.py"


def test_provisioning_files():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "ftd-prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["url"]
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ftd.yaml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


@pytest.mark.parametrize("expr,names", [
    ('sum by (state) (ftd_jobs)', {"ftd_jobs"}),
    ('histogram_quantile(0.95, sum by (job_id, le) (rate(a_bucket{x=~"$y"}[$__rate_interval])))', {"a_bucket"}),
    ('a{phase="forward"} / on (pod, gpu) group_left (job_id) label_replace(b, "pod", "$1", "worker", "(.*)")',
     {"a", "b"}),
    ('a > 1e-5 and b offset 5m', {"a", "b"}),
    ('count(up{job=~".*ftd.*"}) or vector(0)', {"up"}),
])
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names
