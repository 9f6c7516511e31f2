#include "server/metrics/grpc_metrics_interceptor.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"

namespace ftd::server {
namespace {

// "/pkg.Service/Method" if the method is one the server can serve, else "other".
std::string MethodLabel(const char* method) {
  if (method == nullptr) return "other";
  absl::string_view path(method);
  // Health and reflection are served from gRPC's own descriptors.
  for (absl::string_view known :
       {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}) {
    if (path == known) return std::string(path);
  }
  if (!absl::ConsumePrefix(&path, "/")) return "other";
  const size_t slash = path.find('/');
  if (slash == absl::string_view::npos) return "other";
  const auto* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
      std::string(path.substr(0, slash)));
  if (service == nullptr || service->FindMethodByName(std::string(path.substr(slash + 1))) == nullptr) {
    return "other";
  }
  return std::string(method);
}

class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(ServiceMetrics* metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)), start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      metrics_->ObserveGrpc(
          method_, absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
          absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  ServiceMetrics* const metrics_;
  const std::string method_;
  const absl::Time start_;
};

class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(ServiceMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(metrics_, MethodLabel(info->method()));  // owned by info
  }

 private:
  ServiceMetrics* const metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(ServiceMetrics* metrics) {
  return std::make_unique<MetricsInterceptorFactory>(metrics);
}

}  // namespace ftd::server
