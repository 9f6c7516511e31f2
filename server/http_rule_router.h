// Routes REST requests to JobService methods using the `google.api.http` annotations of the
// service's descriptor (read from the generated descriptor pool, not hand-copied), and fills
// request messages from path variables and query parameters per the HttpRule mapping.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace ftd::server {

struct HttpRoute {
  const google::protobuf::MethodDescriptor* method = nullptr;
  std::string verb;          // GET, POST, ...
  std::string path_template; // as annotated, e.g. /v1/jobs/{id}:cancel
  std::string body;          // "" (no body), "*" (whole request) or a field name
  // The template split into literal text and variables, in order.
  struct Part {
    bool is_variable = false;
    std::string text;  // literal text, or the variable's field path
  };
  std::vector<Part> parts;
};

struct RouteMatch {
  const HttpRoute* route = nullptr;
  std::vector<std::pair<std::string, std::string>> variables;  // field path -> value
};

class HttpRuleRouter {
 public:
  // Routes of every method of `service` that has a google.api.http option. INVALID_ARGUMENT
  // naming the method when a template is malformed.
  static absl::StatusOr<HttpRuleRouter> Create(const google::protobuf::ServiceDescriptor* service);

  // The route for `verb` and `path` (URL-decoded); NOT_FOUND when no template matches the
  // path, UNIMPLEMENTED (HTTP 405) when one matches but with another verb.
  absl::StatusOr<RouteMatch> Match(absl::string_view verb, absl::string_view path) const;

  const std::vector<HttpRoute>& routes() const { return routes_; }

 private:
  std::vector<HttpRoute> routes_;
};

// Sets the (possibly nested, dotted) field `path` of `message` from its text form: scalars
// parse by type (enums by name or number, bools as true/false), repeated fields append.
// Accepts proto and JSON field names. INVALID_ARGUMENT naming `path` on any problem.
absl::Status SetFieldFromString(google::protobuf::Message* message, absl::string_view path,
                                absl::string_view value);

// Query string `a=1&b=x%20y` into decoded pairs, in order. INVALID_ARGUMENT on bad escapes.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQueryString(
    absl::string_view query);

}  // namespace ftd::server
