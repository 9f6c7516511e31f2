#!/usr/bin/env python3
"""Writes deploy/grafana/ftd-dashboard.json (the Grafana dashboard for ftd). Edit the panels
here, run `python3 deploy/grafana/generate_dashboard.py && deploy/sync-dashboard.sh`; the tests
(tests/python/test_dashboard.py) check every metric a panel queries against a live /metrics."""
import json
import pathlib
DS = {"type": "prometheus", "uid": "${datasource}"}
J = 'tenant=~"$tenant",job_id=~"$job_id"'
panels = []
pid = [0]
y = [0]

def row(title):
    pid[0] += 1
    panels.append({"id": pid[0], "type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1

x = [0]
def panel(title, targets, kind="timeseries", unit="short", w=8, h=8, desc="", extra=None):
    if x[0] + w > 24:
        x[0] = 0
        y[0] += h
    pid[0] += 1
    p = {"id": pid[0], "type": kind, "title": title, "description": desc, "datasource": DS,
         "gridPos": {"h": h, "w": w, "x": x[0], "y": y[0]},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                     "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else {},
         "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l}
                     for i, (e, l) in enumerate(targets)]}
    if extra:
        p.update(extra)
    panels.append(p)
    x[0] += w

def endrow(h=8):
    x[0] = 0
    y[0] += h

row("Jobs overview")
panel("Running jobs", [('sum(ftd_jobs{state="RUNNING"})', "running")], "stat", w=4, h=4)
panel("Queued jobs", [('sum(ftd_jobs{state="QUEUED"})', "queued")], "stat", w=4, h=4)
panel("Failed jobs (24h)", [('sum(delta(ftd_jobs{state="FAILED"}[24h]))', "failed")], "stat", w=4, h=4,
      desc="Growth of the FAILED count over the last day.")
panel("Queue wait p95", [('histogram_quantile(0.95, sum by (le) (rate(ftd_job_queue_wait_seconds_bucket[$__rate_interval])))', "p95")],
      "stat", unit="s", w=4, h=4)
panel("Jobs with series", [("sum(ftd_metrics_tracked_jobs)", "tracked")], "stat", w=4, h=4,
      desc="Jobs the coordinator currently exports per-job series for (bounded; see ftd_metrics_evicted_jobs_total).")
panel("Coordinator up", [('max(up{job=~".*ftd.*"})', "up")], "stat", w=4, h=4,
      desc="Prometheus' own `up` series for the ftd scrape jobs.")
endrow(4)
panel("Jobs by state", [("sum by (state) (ftd_jobs)", "{{state}}")], w=8)
panel("Progress", [(f'ftd_job_step{{{J}}} / ftd_job_total_steps{{{J}}} > 0', "{{job_id}} ({{model}})")],
      "bargauge", unit="percentunit", w=8,
      extra={"options": {"orientation": "horizontal", "displayMode": "gradient", "reduceOptions": {"calcs": ["lastNotNull"]}},
             "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1}, "overrides": []}})
panel("Queue wait", [("histogram_quantile(0.5, sum by (le) (rate(ftd_job_queue_wait_seconds_bucket[$__rate_interval])))", "p50"),
                     ("histogram_quantile(0.95, sum by (le) (rate(ftd_job_queue_wait_seconds_bucket[$__rate_interval])))", "p95")],
      unit="s", w=8)
endrow()
panel("Restarts (1h)", [(f"increase(ftd_job_restarts_total{{{J}}}[1h])", "{{job_id}}")], w=12)
panel("Tokens processed", [(f"ftd_job_tokens_total{{{J}}}", "{{job_id}}")], w=12)
endrow()

row("Throughput")
panel("Tokens/s per GPU", [(f"ftd_job_tokens_per_second_per_gpu{{{J}}}", "{{job_id}} ({{model}})")], w=8,
      desc="Input tokens per second per GPU of the latest reported step, optimizer step inside the timed region (DESIGN.md).")
panel("Model TFLOP/s per GPU", [(f"ftd_job_model_tflops_per_gpu{{{J}}}", "{{job_id}}")], w=8,
      desc="Dense-equivalent model FLOPs (DESIGN.md formula) per step / step seconds / GPUs.")
panel("MFU", [(f"ftd_job_mfu_ratio{{{J}}}", "{{job_id}}")], unit="percentunit", w=8,
      desc="TFLOP/s per GPU / 989 (H100/H200 dense bf16).")
endrow()
panel("Job tokens/s (all GPUs)", [(f"rate(ftd_job_tokens_total{{{J}}}[$__rate_interval])", "{{job_id}}"),
                                  (f"ftd_job_tokens_per_second_per_gpu{{{J}}} * ftd_job_gpus{{{J}}}", "{{job_id}} latest step")], w=8)
panel("Step duration", [(f"histogram_quantile(0.5, sum by (job_id, le) (rate(ftd_job_step_duration_seconds_bucket{{{J}}}[$__rate_interval])))", "{{job_id}} p50"),
                        (f"histogram_quantile(0.95, sum by (job_id, le) (rate(ftd_job_step_duration_seconds_bucket{{{J}}}[$__rate_interval])))", "{{job_id}} p95")],
      unit="s", w=8)
panel("Step phases", [(f"ftd_job_step_phase_seconds{{{J}}}", "{{job_id}} {{phase}}"),
                      (f"ftd_job_all_to_all_seconds{{{J}}}", "{{job_id}} all-to-all")], unit="s", w=8,
      extra={"fieldConfig": {"defaults": {"unit": "s", "custom": {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30}}, "overrides": []}})
endrow()

row("Loss and learning rate")
panel("Loss", [(f"ftd_job_loss{{{J}}}", "{{job_id}} train"), (f"ftd_job_eval_loss{{{J}}}", "{{job_id}} eval")], w=8,
      desc="Training loss of the latest step, and the loss on the validation set (datasets.validation) at the latest evaluation (hyperparameters.eval_every).")
panel("Learning rate", [(f"ftd_job_learning_rate{{{J}}}", "{{job_id}}")], w=8)
panel("Gradient norm", [(f"ftd_job_grad_norm{{{J}}}", "{{job_id}}")], w=8)
endrow()

row("Memory")
panel("Peak allocated GPU memory (rank 0)", [(f"ftd_job_peak_memory_bytes{{{J}}}", "{{job_id}}")], unit="bytes", w=8)
panel("Reserved GPU memory (rank 0)", [(f"ftd_job_reserved_memory_bytes{{{J}}}", "{{job_id}}")], unit="bytes", w=8)
panel("Framebuffer used per GPU (DCGM)",
      [('DCGM_FI_DEV_FB_USED * 1048576 * on (pod, gpu) group_left (job_id) '
        f'label_replace(label_replace(ftd_job_rank_info{{{J}}}, "pod", "$1", "worker", "(.*)"), "gpu", "$1", "local_rank", "(.*)")',
        "{{job_id}} {{pod}} GPU {{gpu}}")],
      unit="bytes", w=8,
      desc="DCGM exporter's framebuffer use for the GPUs of each job's ranks (joined on pod = worker and gpu = local rank; empty without dcgm-exporter's pod mapping).")
endrow()

row("MoE load and all-to-all")
panel("Expert load imbalance (max/mean)", [(f"ftd_job_expert_load_imbalance_ratio{{{J}}}", "{{job_id}}")], w=8,
      desc="Max over experts of tokens routed / mean; 1 = perfectly balanced.")
panel("All-to-all time", [(f"ftd_job_all_to_all_seconds{{{J}}}", "{{job_id}}")], unit="s", w=8)
panel("All-to-all share of step time",
      [(f"ftd_job_all_to_all_seconds{{{J}}} / (rate(ftd_job_step_duration_seconds_sum{{{J}}}[$__rate_interval]) / rate(ftd_job_step_duration_seconds_count{{{J}}}[$__rate_interval]))",
        "{{job_id}}")], unit="percentunit", w=8)
endrow()

row("Workers and GPUs")
panel("Workers", [("sum by (state) (ftd_workers)", "{{state}}")], w=6,
      desc="Registered workers; busy: at least one rank placed.")
panel("GPUs free / busy", [("sum by (state) (ftd_gpus)", "{{state}}")], w=6,
      extra={"fieldConfig": {"defaults": {"unit": "short", "custom": {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40}}, "overrides": []}})
panel("Slots per worker", [('ftd_worker_slots{state="busy"}', "{{worker}} busy"), ('ftd_worker_slots{state="free"}', "{{worker}} free")], w=6)
panel("Heartbeat age", [("ftd_worker_heartbeat_age_seconds", "{{worker}}")], unit="s", w=6,
      desc="Seconds since each worker's last heartbeat.")
endrow()
panel("Ranks per worker", [(f"count by (worker) (ftd_job_rank_info{{{J}}})", "{{worker}}")], w=8,
      desc="Ranks of running jobs placed on each worker.")
panel("GPU utilisation of job GPUs (DCGM)",
      [('avg by (job_id) (DCGM_FI_DEV_GPU_UTIL * on (pod, gpu) group_left (job_id) '
        f'label_replace(label_replace(ftd_job_rank_info{{{J}}}, "pod", "$1", "worker", "(.*)"), "gpu", "$1", "local_rank", "(.*)"))',
        "{{job_id}}")], unit="percent", w=8)
panel("GPU power of job GPUs (DCGM)",
      [('sum by (job_id) (DCGM_FI_DEV_POWER_USAGE * on (pod, gpu) group_left (job_id) '
        f'label_replace(label_replace(ftd_job_rank_info{{{J}}}, "pod", "$1", "worker", "(.*)"), "gpu", "$1", "local_rank", "(.*)"))',
        "{{job_id}}")], unit="watt", w=8)
endrow()
panel("GPU utilisation, all GPUs (DCGM)", [("avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}}")], unit="percent", w=12)
panel("SM clock (DCGM)", [("avg by (Hostname) (DCGM_FI_DEV_SM_CLOCK)", "{{Hostname}}")], unit="rotmhz", w=12)
endrow()

row("Service health")
panel("gRPC requests/s", [("sum by (method, code) (rate(ftd_grpc_requests_total[$__rate_interval]))", "{{method}} {{code}}")], unit="reqps", w=8)
panel("gRPC latency p99", [("histogram_quantile(0.99, sum by (method, le) (rate(ftd_grpc_request_duration_seconds_bucket{method!~\".*Watch.*\"}[$__rate_interval])))", "{{method}}")], unit="s", w=8)
panel("gRPC errors/s", [("sum by (method, code) (rate(ftd_grpc_requests_total{code!=\"OK\"}[$__rate_interval]))", "{{method}} {{code}}")], unit="reqps", w=8)
endrow()
panel("REST requests/s", [("sum by (method, code) (rate(ftd_http_requests_total[$__rate_interval]))", "{{method}} {{code}}")], unit="reqps", w=8)
panel("REST latency p99", [("histogram_quantile(0.99, sum by (method, le) (rate(ftd_http_request_duration_seconds_bucket{method!=\"WatchJob\"}[$__rate_interval])))", "{{method}}")], unit="s", w=8)
panel("Store commit latency", [("histogram_quantile(0.5, sum by (durability, le) (rate(ftd_store_commit_duration_seconds_bucket[$__rate_interval])))", "{{durability}} p50"),
                               ("histogram_quantile(0.99, sum by (durability, le) (rate(ftd_store_commit_duration_seconds_bucket[$__rate_interval])))", "{{durability}} p99")],
      unit="s", w=8)
endrow()
panel("Exporter: evicted jobs and dropped events", [("sum(rate(ftd_metrics_evicted_jobs_total[$__rate_interval]))", "evicted/s"),
                                                    ("sum(rate(ftd_metrics_dropped_events_total[$__rate_interval]))", "dropped/s")], w=12)
panel("Scrape duration", [('scrape_duration_seconds{job=~".*ftd.*"}', "{{instance}}")], unit="s", w=12)
endrow()

dash = {
    "title": "ftd",
    "uid": "ftd-overview",
    "description": "ftd fine-tuning service: jobs, throughput (TPS/GPU, TFLOP/s, MFU), loss, memory, MoE load, workers and GPUs (with DCGM exporter where present), service health. Source: deploy/grafana/ftd-dashboard.json.",
    "editable": True,
    "schemaVersion": 39,
    "version": 1,
    "tags": ["ftd", "training"],
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "graphTooltip": 1,
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "tenant", "type": "query", "label": "Tenant", "datasource": DS,
         "query": {"query": "label_values(ftd_job_gpus, tenant)", "refId": "tenant"},
         "definition": "label_values(ftd_job_gpus, tenant)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}},
        {"name": "job_id", "type": "query", "label": "Job", "datasource": DS,
         "query": {"query": 'label_values(ftd_job_gpus{tenant=~"$tenant"}, job_id)', "refId": "job_id"},
         "definition": 'label_values(ftd_job_gpus{tenant=~"$tenant"}, job_id)',
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}},
    ]},
    "panels": panels,
}
import sys
OUT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent / "ftd-dashboard.json"
OUT.write_text(json.dumps(dash, indent=2) + "\n", encoding="utf-8")
print(f"{OUT}: {len(panels)} panels")
