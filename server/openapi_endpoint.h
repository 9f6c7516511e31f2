// GET /v1/openapi.json: the OpenAPI document generated from the .proto files when this binary
// was built (proto/openapi). Public, as /healthz: it describes the API, not anyone's jobs.
#pragma once

#include "server/rest_gateway.h"

namespace ftd::server {

void ServeOpenApiDocument(RestGateway* gateway);

}  // namespace ftd::server
