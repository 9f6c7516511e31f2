// ServiceMetrics: the coordinator's Prometheus registry (prometheus-cpp) and its service-wide
// series: gRPC and REST requests by method and code with latency histograms, and the store's
// commit latency. Per-job series and job counts live in JobMetricsExporter, which registers
// its families in the same registry. Text() renders the registry in the text exposition
// format for /metrics.
#pragma once

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ftd::server {

class ServiceMetrics {
 public:
  ServiceMetrics();
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  prometheus::Registry& registry() { return *registry_; }

  // `method` is a bounded label (the caller maps unknown names to "other"); `code` is the gRPC
  // status name (OK, NOT_FOUND, ...).
  void ObserveGrpc(absl::string_view method, absl::string_view code, absl::Duration latency);
  // `route` is the RPC a REST route maps to (CreateJob, ...) or the endpoint (/healthz,
  // /metrics); `http_status` the status sent.
  void ObserveHttp(absl::string_view route, int http_status, absl::Duration latency);
  // One committed store transaction; `durability` is "full" (fsync'd) or "normal".
  void ObserveStoreCommit(absl::string_view durability, absl::Duration latency);

  // Adds series computed at scrape time (e.g. from the worker registry). Call before serving.
  void AddCollectable(std::shared_ptr<prometheus::Collectable> collectable) {
    collectables_.push_back(std::move(collectable));
  }

  // The registry and the collectables in the Prometheus text format (version 0.0.4).
  std::string Text() const;

 private:
  // The series of a (family, label values) pair, added on first use and cached: Family::Add
  // would build a throw-away Histogram on every call. Service-wide series are never removed.
  prometheus::Counter* CounterFor(prometheus::Family<prometheus::Counter>* family,
                                  const std::string& name, const std::string& code);
  prometheus::Histogram* HistogramFor(prometheus::Family<prometheus::Histogram>* family,
                                      const std::string& label, const std::string& value,
                                      const prometheus::Histogram::BucketBoundaries& buckets);

  std::shared_ptr<prometheus::Registry> registry_;
  absl::Mutex cache_mu_;
  absl::flat_hash_map<std::tuple<const void*, std::string, std::string>, void*> cache_
      ABSL_GUARDED_BY(cache_mu_);
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  prometheus::Family<prometheus::Counter>* grpc_requests_;
  prometheus::Family<prometheus::Histogram>* grpc_latency_;
  prometheus::Family<prometheus::Counter>* http_requests_;
  prometheus::Family<prometheus::Histogram>* http_latency_;
  prometheus::Family<prometheus::Histogram>* store_commit_;
};

// Bucket boundaries shared by the coordinator's histograms.
const prometheus::Histogram::BucketBoundaries& RequestLatencyBuckets();

}  // namespace ftd::server
