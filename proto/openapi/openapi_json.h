// The OpenAPI document generated at build time by ftd-openapi-gen (see openapi_document.h),
// embedded in the coordinator, which serves it at GET /v1/openapi.json.
#pragma once

namespace ftd::openapi {
extern const char kOpenApiJson[];
extern const unsigned long kOpenApiJsonSize;  // bytes, without the terminating NUL
}  // namespace ftd::openapi
