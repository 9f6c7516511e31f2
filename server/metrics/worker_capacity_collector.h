// WorkerCapacityCollector: worker and GPU capacity gauges, read from the scheduler's
// WorkerRegistry at scrape time (WorkerRegistry::Snapshot):
//   ftd_workers{state="idle|busy"}             registered workers with no / some busy slot
//   ftd_gpus{state="free|busy"}                GPUs of GPU workers
//   ftd_worker_slots{worker, state="free|busy"} per worker (GPUs, or CPU slots without GPUs)
//   ftd_worker_heartbeat_age_seconds{worker}   since the worker's last heartbeat
// The per-worker series are bounded by the cluster's size; the worker name is its pod name
// under the Helm chart, so they join with GPU exporters' `pod` label.
#pragma once

#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "server/worker_registry.h"

namespace ftd::server {

class WorkerCapacityCollector final : public prometheus::Collectable {
 public:
  explicit WorkerCapacityCollector(const WorkerRegistry* registry) : registry_(registry) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const WorkerRegistry* const registry_;
};

}  // namespace ftd::server
