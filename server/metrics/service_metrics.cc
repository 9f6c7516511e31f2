#include "server/metrics/service_metrics.h"

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace ftd::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildHistogram;

}  // namespace

const prometheus::Histogram::BucketBoundaries& RequestLatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  return *buckets;
}

ServiceMetrics::ServiceMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  grpc_requests_ = &BuildCounter()
                        .Name("ftd_grpc_requests_total")
                        .Help("gRPC calls handled, by full method name and status code.")
                        .Register(*registry_);
  grpc_latency_ = &BuildHistogram()
                       .Name("ftd_grpc_request_duration_seconds")
                       .Help("gRPC call latency from arrival to the status being sent (streams: "
                             "their whole duration), by method.")
                       .Register(*registry_);
  http_requests_ = &BuildCounter()
                        .Name("ftd_http_requests_total")
                        .Help("REST/HTTP requests handled, by RPC (or endpoint) and HTTP status.")
                        .Register(*registry_);
  http_latency_ = &BuildHistogram()
                       .Name("ftd_http_request_duration_seconds")
                       .Help("REST/HTTP request latency (SSE watches: the stream's duration), by "
                             "RPC (or endpoint).")
                       .Register(*registry_);
  store_commit_ = &BuildHistogram()
                       .Name("ftd_store_commit_duration_seconds")
                       .Help("Job store transaction commit latency, by durability (full: fsync'd; "
                             "normal: metric samples).")
                       .Register(*registry_);
}

prometheus::Counter* ServiceMetrics::CounterFor(prometheus::Family<prometheus::Counter>* family,
                                               const std::string& method, const std::string& code) {
  absl::MutexLock lock(&cache_mu_);
  void*& slot = cache_[std::make_tuple(static_cast<const void*>(family), method, code)];
  if (slot == nullptr) slot = &family->Add({{"method", method}, {"code", code}});
  return static_cast<prometheus::Counter*>(slot);
}

prometheus::Histogram* ServiceMetrics::HistogramFor(
    prometheus::Family<prometheus::Histogram>* family, const std::string& label,
    const std::string& value, const prometheus::Histogram::BucketBoundaries& buckets) {
  absl::MutexLock lock(&cache_mu_);
  void*& slot = cache_[std::make_tuple(static_cast<const void*>(family), value, std::string())];
  if (slot == nullptr) slot = &family->Add({{label, value}}, buckets);
  return static_cast<prometheus::Histogram*>(slot);
}

void ServiceMetrics::ObserveGrpc(absl::string_view method, absl::string_view code,
                                 absl::Duration latency) {
  const std::string m(method);
  CounterFor(grpc_requests_, m, std::string(code))->Increment();
  HistogramFor(grpc_latency_, "method", m, RequestLatencyBuckets())
      ->Observe(absl::ToDoubleSeconds(latency));
}

void ServiceMetrics::ObserveHttp(absl::string_view route, int http_status, absl::Duration latency) {
  const std::string r(route);
  CounterFor(http_requests_, r, absl::StrCat(http_status))->Increment();
  HistogramFor(http_latency_, "method", r, RequestLatencyBuckets())
      ->Observe(absl::ToDoubleSeconds(latency));
}

void ServiceMetrics::ObserveStoreCommit(absl::string_view durability, absl::Duration latency) {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
  HistogramFor(store_commit_, "durability", std::string(durability), *buckets)
      ->Observe(absl::ToDoubleSeconds(latency));
}

std::string ServiceMetrics::Text() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (const auto& c : collectables_) {
    for (auto& f : c->Collect()) families.push_back(std::move(f));
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace ftd::server
