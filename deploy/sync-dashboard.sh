#!/usr/bin/env bash
# Copies the Grafana dashboard into the Helm chart: the chart's ConfigMap embeds it with
# .Files.Get, which only sees files inside helm/ftd/. tests/python/test_helm_chart.py fails
# while the two copies differ.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/deploy/grafana/ftd-dashboard.json"
dst="$root/helm/ftd/dashboards/ftd-dashboard.json"
[ -f "$src" ] || { echo "sync-dashboard: $src does not exist" >&2; exit 1; }
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$src" ||
  { echo "sync-dashboard: $src is not valid JSON" >&2; exit 1; }
cp "$src" "$dst"
echo "sync-dashboard: copied to $dst"
