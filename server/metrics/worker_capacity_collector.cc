#include "server/metrics/worker_capacity_collector.h"

#include <algorithm>
#include <string>

#include "absl/time/clock.h"
#include "prometheus/client_metric.h"

namespace ftd::server {
namespace {

prometheus::ClientMetric GaugeSample(std::vector<prometheus::ClientMetric::Label> labels, double v) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = v;
  return m;
}

prometheus::MetricFamily GaugeFamily(std::string name, std::string help) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = prometheus::MetricType::Gauge;
  return f;
}

}  // namespace

std::vector<prometheus::MetricFamily> WorkerCapacityCollector::Collect() const {
  const std::vector<WorkerInfo> workers = registry_->Snapshot();
  const absl::Time now = absl::Now();
  int idle = 0, busy = 0;
  int64_t gpus_free = 0, gpus_busy = 0;
  auto workers_f = GaugeFamily("ftd_workers", "Registered workers, by state (busy: at least one rank placed).");
  auto gpus_f = GaugeFamily("ftd_gpus", "GPUs of registered workers, by state.");
  auto slots_f = GaugeFamily("ftd_worker_slots",
                             "Slots of each worker (GPUs, or CPU slots on a worker without GPUs), by state.");
  auto age_f = GaugeFamily("ftd_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat.");
  for (const WorkerInfo& w : workers) {
    const int used = std::clamp(w.busy_slots, 0, std::max(w.total_slots, 0));
    const int free = std::max(w.total_slots - used, 0);
    (used > 0 ? busy : idle) += 1;
    if (w.has_gpus) {
      gpus_free += free;
      gpus_busy += used;
    }
    slots_f.metric.push_back(GaugeSample({{"worker", w.name}, {"state", "free"}}, free));
    slots_f.metric.push_back(GaugeSample({{"worker", w.name}, {"state", "busy"}}, used));
    age_f.metric.push_back(
        GaugeSample({{"worker", w.name}}, std::max(0.0, absl::ToDoubleSeconds(now - w.last_heartbeat))));
  }
  workers_f.metric.push_back(GaugeSample({{"state", "idle"}}, idle));
  workers_f.metric.push_back(GaugeSample({{"state", "busy"}}, busy));
  gpus_f.metric.push_back(GaugeSample({{"state", "free"}}, static_cast<double>(gpus_free)));
  gpus_f.metric.push_back(GaugeSample({{"state", "busy"}}, static_cast<double>(gpus_busy)));
  return {std::move(workers_f), std::move(gpus_f), std::move(slots_f), std::move(age_f)};
}

}  // namespace ftd::server
