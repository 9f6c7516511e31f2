// The /metrics endpoint: the coordinator's registry in the Prometheus text exposition format
// (version 0.0.4), served by a civetweb handler (RestGateway::AddHandler). No bearer token:
// Prometheus scrapes it as deployed (deploy/prometheus/prometheus.yml, the chart's
// ServiceMonitor); restrict it with a NetworkPolicy, as the chart does.
#pragma once

#include <civetweb.h>

#include "server/metrics/job_metrics_exporter.h"
#include "server/metrics/service_metrics.h"

namespace ftd::server {

// Serves one scrape on `conn`; `exporter` may be null. Returns the HTTP status sent.
int ServeMetrics(mg_connection* conn, ServiceMetrics* metrics, JobMetricsExporter* exporter);

}  // namespace ftd::server
