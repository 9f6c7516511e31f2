// gRPC status codes as HTTP statuses, as google.api and grpc-gateway map them.
#pragma once

#include "absl/status/status.h"

namespace ftd::server {

int HttpStatusFromCode(absl::StatusCode code);
const char* HttpReasonPhrase(int http_status);

}  // namespace ftd::server
