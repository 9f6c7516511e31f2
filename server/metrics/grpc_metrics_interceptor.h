// A gRPC server interceptor that counts every call by method and status code and observes its
// latency (arrival to status sent) in ServiceMetrics. Methods outside the registered services
// are counted as "other", so clients cannot grow the label set.
#pragma once

#include <memory>

#include <grpcpp/support/server_interceptor.h>

#include "server/metrics/service_metrics.h"

namespace ftd::server {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(ServiceMetrics* metrics);

}  // namespace ftd::server
