// Builds the OpenAPI 3.1 document of ftd's REST API from proto descriptors: the routes of every
// `google.api.http` annotation, request and response bodies as the protobuf JSON mapping
// writes them, query and path parameters, the bearer-token scheme, the error body, and the
// server-sent-events stream of WatchJob. Comments of the .proto files become descriptions when
// the descriptors carry source info (protoc --include_source_info).
//
// A few endpoints are written by hand in server/ rather than served from an annotation (rank
// logs as text, health, readiness, /metrics, the document itself); they are described by
// HandWrittenRoutes() below, with the parameters of the logs route still read from
// StreamLogsRequest.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/descriptor.h"
#include "nlohmann/json.hpp"

namespace ftd::openapi {

struct OpenApiOptions {
  std::string title = "ftd";
  std::string version;  // info.version
  // The files whose services are described; each service method with a google.api.http
  // annotation becomes an operation.
  std::vector<const google::protobuf::FileDescriptor*> files;
};

// INVALID_ARGUMENT naming the method for a template or binding the REST gateway would not
// serve either (unsupported pattern, a variable or body that names no field).
absl::StatusOr<nlohmann::ordered_json> BuildOpenApiDocument(const OpenApiOptions& options);

// The document as the coordinator serves it (two-space indentation, trailing newline).
std::string SerializeOpenApiDocument(const nlohmann::ordered_json& document);

}  // namespace ftd::openapi
