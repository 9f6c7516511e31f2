#include "server/openapi_endpoint.h"

#include <cstring>
#include <string>

#include "proto/openapi/openapi_json.h"

namespace ftd::server {

void ServeOpenApiDocument(RestGateway* gateway) {
  gateway->AddHandler("/v1/openapi.json", [](mg_connection* conn) {
    const mg_request_info* info = mg_get_request_info(conn);
    if (info->request_method == nullptr || std::strcmp(info->request_method, "GET") != 0) {
      return RestGateway::SendError(conn, absl::UnimplementedError("method is not allowed"));
    }
    return RestGateway::SendJson(
        conn, 200, std::string(ftd::openapi::kOpenApiJson, ftd::openapi::kOpenApiJsonSize));
  });
}

}  // namespace ftd::server
