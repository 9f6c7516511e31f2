#include "proto/openapi/openapi_document.h"

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/api/annotations.pb.h"

namespace ftd::openapi {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::MethodDescriptor;
using google::protobuf::ServiceDescriptor;
using Json = nlohmann::ordered_json;

constexpr char kSchemas[] = "#/components/schemas/";
constexpr char kResponses[] = "#/components/responses/";
constexpr char kJson[] = "application/json";

// The comment attached to a descriptor (leading, then trailing), one space of the `// ` of
// each line removed; empty without source info.
template <typename D>
std::string CommentOf(const D* d) {
  google::protobuf::SourceLocation loc;
  if (!d->GetSourceLocation(&loc)) return "";
  std::vector<std::string> lines;
  for (const std::string* c : {&loc.leading_comments, &loc.trailing_comments}) {
    for (absl::string_view line : absl::StrSplit(*c, '\n')) {
      absl::ConsumePrefix(&line, " ");
      lines.emplace_back(absl::StripTrailingAsciiWhitespace(line));
    }
  }
  return std::string(absl::StripAsciiWhitespace(absl::StrJoin(lines, "\n")));
}

std::string Ref(absl::string_view name) { return absl::StrCat(kSchemas, name); }

// Member lists in descriptions: `a`, `b` and `c`.
std::string CodeList(const std::vector<std::string>& names) {
  std::vector<std::string> quoted;
  for (const std::string& n : names) quoted.push_back(absl::StrCat("`", n, "`"));
  if (quoted.size() <= 1) return absl::StrJoin(quoted, "");
  return absl::StrCat(absl::StrJoin(quoted.begin(), quoted.end() - 1, ", "), " and ", quoted.back());
}

// JSON Schemas of the protobuf JSON mapping, with one component per message and enum that
// the routes reach (well-known types are inlined as the mapping writes them).
class SchemaCollector {
 public:
  Json MessageSchemaRef(const Descriptor* d) {
    if (std::optional<Json> wkt = WellKnown(d)) return *wkt;
    Want(d->full_name(), [this, d] { return MessageSchema(d); });
    return Json{{"$ref", Ref(d->full_name())}};
  }

  // The schema of one value of `f` (an element, for repeated fields).
  Json ValueSchema(const FieldDescriptor* f) {
    switch (f->type()) {
      case FieldDescriptor::TYPE_DOUBLE:
      case FieldDescriptor::TYPE_FLOAT:
        // The mapping writes non-finite values as strings.
        return Json{{"anyOf", Json::array({Json{{"type", "number"},
                                                {"format", f->type() == FieldDescriptor::TYPE_FLOAT
                                                               ? "float" : "double"}},
                                           Json{{"type", "string"},
                                                {"enum", Json::array({"NaN", "Infinity", "-Infinity"})}}})}};
      case FieldDescriptor::TYPE_INT32:
      case FieldDescriptor::TYPE_SINT32:
      case FieldDescriptor::TYPE_SFIXED32:
        return Json{{"type", "integer"}, {"format", "int32"}};
      case FieldDescriptor::TYPE_UINT32:
      case FieldDescriptor::TYPE_FIXED32:
        return Json{{"type", "integer"}, {"format", "uint32"}, {"minimum", 0},
                    {"maximum", 4294967295LL}};
      // 64-bit integers are decimal strings in the mapping (numbers are accepted on input).
      case FieldDescriptor::TYPE_INT64:
      case FieldDescriptor::TYPE_SINT64:
      case FieldDescriptor::TYPE_SFIXED64:
        return Json{{"type", "string"}, {"format", "int64"}, {"pattern", "^-?[0-9]{1,19}$"}};
      case FieldDescriptor::TYPE_UINT64:
      case FieldDescriptor::TYPE_FIXED64:
        return Json{{"type", "string"}, {"format", "uint64"}, {"pattern", "^[0-9]{1,20}$"}};
      case FieldDescriptor::TYPE_BOOL:
        return Json{{"type", "boolean"}};
      case FieldDescriptor::TYPE_STRING:
        return Json{{"type", "string"}};
      case FieldDescriptor::TYPE_BYTES:
        return Json{{"type", "string"}, {"format", "byte"}, {"contentEncoding", "base64"}};
      case FieldDescriptor::TYPE_ENUM: {
        const EnumDescriptor* e = f->enum_type();
        Want(e->full_name(), [this, e] { return EnumSchema(e); });
        return Json{{"$ref", Ref(e->full_name())}};
      }
      case FieldDescriptor::TYPE_MESSAGE:
      case FieldDescriptor::TYPE_GROUP:
        return MessageSchemaRef(f->message_type());
    }
    return Json::object();
  }

  // The schema of field `f` as it appears in its message's JSON object.
  Json FieldSchema(const FieldDescriptor* f) {
    Json schema;
    if (f->is_map()) {
      schema = Json{{"type", "object"},
                    {"additionalProperties", ValueSchema(f->message_type()->map_value())}};
    } else if (f->is_repeated()) {
      schema = Json{{"type", "array"}, {"items", ValueSchema(f)}};
    } else {
      schema = ValueSchema(f);
    }
    std::string description = CommentOf(f);
    if (const google::protobuf::OneofDescriptor* oneof = f->real_containing_oneof()) {
      std::vector<std::string> members;
      for (int i = 0; i < oneof->field_count(); ++i) members.push_back(oneof->field(i)->json_name());
      absl::StrAppend(&description, description.empty() ? "" : "\n\n", "One of ",
                      CodeList(members), " (oneof `", oneof->name(), "`): at most one is set.");
    }
    if (!description.empty()) schema["description"] = description;
    return schema;
  }

  // Every component wanted so far, built breadth-first, sorted by name.
  Json Components() {
    while (!pending_.empty()) {
      auto [name, build] = std::move(pending_.front());
      pending_.erase(pending_.begin());
      schemas_[name] = build();
    }
    Json out = Json::object();
    for (auto& [name, schema] : schemas_) out[name] = std::move(schema);
    return out;
  }

 private:
  void Want(const std::string& name, std::function<Json()> build) {
    if (!wanted_.insert(name).second) return;
    pending_.emplace_back(name, std::move(build));
  }

  Json MessageSchema(const Descriptor* d) {
    Json schema{{"type", "object"}};
    if (std::string c = CommentOf(d); !c.empty()) schema["description"] = c;
    Json properties = Json::object();
    for (int i = 0; i < d->field_count(); ++i) {
      properties[d->field(i)->json_name()] = FieldSchema(d->field(i));
    }
    schema["properties"] = std::move(properties);
    return schema;
  }

  Json EnumSchema(const EnumDescriptor* e) {
    Json names = Json::array();
    std::vector<std::string> notes;
    for (int i = 0; i < e->value_count(); ++i) {
      names.push_back(e->value(i)->name());
      if (std::string c = CommentOf(e->value(i)); !c.empty()) {
        notes.push_back(absl::StrCat("- `", e->value(i)->name(), "`: ", c));
      }
    }
    std::string description = CommentOf(e);
    absl::StrAppend(&description, description.empty() ? "" : "\n\n",
                    "Written as the value's name; its number is accepted on input.");
    if (!notes.empty()) absl::StrAppend(&description, "\n\n", absl::StrJoin(notes, "\n"));
    return Json{{"type", "string"}, {"enum", std::move(names)}, {"description", description}};
  }

  static std::optional<Json> WellKnown(const Descriptor* d) {
    const std::string& n = d->full_name();
    if (!absl::StartsWith(n, "google.protobuf.")) return std::nullopt;
    if (n == "google.protobuf.Timestamp") {
      return Json{{"type", "string"}, {"format", "date-time"},
                  {"description", "RFC 3339, UTC (`Z`), e.g. `2026-01-02T03:04:05.678Z`."}};
    }
    if (n == "google.protobuf.Duration") {
      return Json{{"type", "string"}, {"pattern", "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
                  {"description", "Seconds with an `s` suffix, e.g. `1.5s`."}};
    }
    if (n == "google.protobuf.Empty") return Json{{"type", "object"}};
    if (n == "google.protobuf.FieldMask") return Json{{"type", "string"}};
    if (n == "google.protobuf.Struct") return Json{{"type", "object"}};
    if (n == "google.protobuf.Value") return Json::object();
    if (n == "google.protobuf.ListValue") return Json{{"type", "array"}};
    if (n == "google.protobuf.Any") {
      return Json{{"type", "object"}, {"properties", {{"@type", {{"type", "string"}}}}},
                  {"required", Json::array({"@type"})}};
    }
    if (absl::EndsWith(n, "Value") && d->field_count() == 1) {  // wrappers: the bare value
      SchemaCollector scalars;
      Json value = scalars.ValueSchema(d->field(0));
      return Json{{"anyOf", Json::array({value, Json{{"type", "null"}}})}};
    }
    return std::nullopt;
  }

  std::set<std::string> wanted_;
  std::vector<std::pair<std::string, std::function<Json()>>> pending_;
  std::map<std::string, Json> schemas_;
};

// A route as the gateway serves it: verb, template, body binding, variables.
struct Route {
  const MethodDescriptor* method = nullptr;
  std::string verb;  // lower case, as OpenAPI keys operations
  std::string path;  // the template; OpenAPI's {name} templating is the same syntax
  std::string body;  // "", "*" or a field name
  std::vector<std::string> variables;
  std::string media_type = kJson;  // of a streaming response: text/event-stream or text/plain
};

absl::StatusOr<std::vector<std::string>> TemplateVariables(const std::string& path) {
  std::vector<std::string> vars;
  size_t pos = 0;
  while ((pos = path.find('{', pos)) != std::string::npos) {
    const size_t close = path.find('}', pos);
    if (close == std::string::npos) return absl::InvalidArgumentError("unclosed `{`");
    std::string var = path.substr(pos + 1, close - pos - 1);
    if (var.empty() || var.find('=') != std::string::npos) {
      return absl::InvalidArgumentError("only {field} variables are supported");
    }
    vars.push_back(std::move(var));
    pos = close + 1;
  }
  return vars;
}

// The field at dotted `path` of `type` (proto or JSON names), or null.
const FieldDescriptor* FindFieldPath(const Descriptor* type, absl::string_view path) {
  const FieldDescriptor* field = nullptr;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (type == nullptr) return nullptr;
    const std::string name(part);
    field = type->FindFieldByName(name);
    if (field == nullptr) field = type->FindFieldByCamelcaseName(name);
    if (field == nullptr) return nullptr;
    type = field->message_type();
  }
  return field;
}

std::string JsonPath(const Descriptor* type, absl::string_view path) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    const FieldDescriptor* f = FindFieldPath(type, part);
    out.push_back(f->json_name());
    type = f->message_type();
  }
  return absl::StrJoin(out, ".");
}

absl::StatusOr<Route> AnnotatedRoute(const MethodDescriptor* method) {
  const google::api::HttpRule& rule = method->options().GetExtension(google::api::http);
  Route route;
  route.method = method;
  route.body = rule.body();
  switch (rule.pattern_case()) {
    case google::api::HttpRule::kGet: route.verb = "get"; route.path = rule.get(); break;
    case google::api::HttpRule::kPost: route.verb = "post"; route.path = rule.post(); break;
    case google::api::HttpRule::kPut: route.verb = "put"; route.path = rule.put(); break;
    case google::api::HttpRule::kDelete: route.verb = "delete"; route.path = rule.delete_(); break;
    case google::api::HttpRule::kPatch: route.verb = "patch"; route.path = rule.patch(); break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(method->full_name(), ": unsupported google.api.http pattern"));
  }
  if (rule.additional_bindings_size() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(method->full_name(), ": additional_bindings are not served"));
  }
  if (method->server_streaming()) route.media_type = "text/event-stream";
  return route;
}

// Methods whose REST form is a handler of its own in server/ rather than the annotated-route
// gateway (see server/README.md).
struct HandWritten {
  const char* method;  // full name
  const char* verb;
  const char* path;
  const char* media_type;
  const char* description;
};
constexpr HandWritten kHandWrittenRoutes[] = {
    {"ftd.v1.JobLogService.StreamLogs", "get", "/v1/jobs/{id}/logs", "text/plain",
     "Plain text, one line per rank output line: `[rank R] text`. With `follow=true` the "
     "response (chunked) stays open and new lines follow until the job ends."},
};

Json ErrorResponseRef(const char* name) { return Json{{"$ref", absl::StrCat(kResponses, name)}}; }

class DocumentBuilder {
 public:
  explicit DocumentBuilder(const OpenApiOptions& options) : options_(options) {}

  absl::StatusOr<Json> Build() {
    std::vector<Route> routes;
    Json tags = Json::array();
    std::set<std::string> tagged;
    auto tag = [&](const ServiceDescriptor* s) {
      if (!tagged.insert(s->name()).second) return;
      Json t{{"name", s->name()}};
      if (std::string c = CommentOf(s); !c.empty()) t["description"] = c;
      tags.push_back(std::move(t));
    };
    for (const google::protobuf::FileDescriptor* file : options_.files) {
      for (int s = 0; s < file->service_count(); ++s) {
        const ServiceDescriptor* service = file->service(s);
        for (int m = 0; m < service->method_count(); ++m) {
          const MethodDescriptor* method = service->method(m);
          if (!method->options().HasExtension(google::api::http)) continue;
          absl::StatusOr<Route> route = AnnotatedRoute(method);
          if (!route.ok()) return route.status();
          tag(service);
          routes.push_back(*std::move(route));
        }
      }
    }
    for (const HandWritten& h : kHandWrittenRoutes) {
      const MethodDescriptor* method = nullptr;
      for (const google::protobuf::FileDescriptor* file : options_.files) {
        if (method == nullptr) method = file->pool()->FindMethodByName(h.method);
      }
      if (method == nullptr) continue;  // that service is not part of these files
      Route route;
      route.method = method;
      route.verb = h.verb;
      route.path = h.path;
      route.media_type = h.media_type;
      tag(method->service());
      routes.push_back(std::move(route));
      hand_written_descriptions_[method] = h.description;
    }

    Json paths = Json::object();
    for (Route& route : routes) {
      absl::StatusOr<std::vector<std::string>> vars = TemplateVariables(route.path);
      if (!vars.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(route.method->full_name(), ": template `",
                                                       route.path, "`: ", vars.status().message()));
      }
      route.variables = *std::move(vars);
      absl::StatusOr<Json> operation = Operation(route);
      if (!operation.ok()) return operation.status();
      // OpenAPI names path parameters by the template; the JSON name is what clients see.
      std::string path = route.path;
      for (const std::string& v : route.variables) {
        path = absl::StrReplaceAll(path, {{absl::StrCat("{", v, "}"),
                                           absl::StrCat("{", JsonPath(route.method->input_type(), v), "}")}});
      }
      paths[path][route.verb] = *std::move(operation);
    }
    AddServiceEndpoints(&paths);
    tags.push_back(Json{{"name", "Service"},
                        {"description", "Health, readiness, metrics and this document."}});

    Json doc;
    doc["openapi"] = "3.1.0";
    doc["info"] = Json{{"title", options_.title},
                       {"version", options_.version},
                       {"description", Description()}};
    doc["servers"] = Json::array(
        {Json{{"url", "/"}, {"description", "The coordinator that serves this document"}}});
    doc["security"] = Json::array({Json{{"bearerAuth", Json::array()}}});
    doc["tags"] = std::move(tags);
    doc["paths"] = std::move(paths);
    Json components;
    components["schemas"] = schemas_.Components();
    components["schemas"]["Error"] = ErrorSchema();
    components["responses"] = ErrorResponses();
    components["securitySchemes"] = Json{
        {"bearerAuth",
         {{"type", "http"},
          {"scheme", "bearer"},
          {"description", "A token from the coordinator's tokens file (`TOKEN TENANT ROLE`): "
                          "`Authorization: Bearer TOKEN`. Users see only their tenant's jobs."}}}};
    doc["components"] = std::move(components);
    return doc;
  }

 private:
  static std::string Description() {
    return "REST/JSON API of the ftd coordinator, generated from its .proto files "
           "(proto/ftd/v1) and their google.api.http annotations. The same API is served over "
           "gRPC (package ftd.v1).\n\n"
           "- Bodies and responses use the protobuf JSON mapping: lowerCamelCase names (proto "
           "names are accepted on input), 64-bit integers as decimal strings, enums by name, "
           "timestamps in RFC 3339. Unknown fields in a body are rejected with 400.\n"
           "- Query parameters take JSON or proto names; repeated ones are repeated "
           "(`states=QUEUED&states=RUNNING`); unknown parameters are rejected with 400.\n"
           "- Errors are `{\"code\": <gRPC code>, \"status\": \"INVALID_ARGUMENT\", "
           "\"message\": \"spec.hyperparameters.lr: must be ...\"}`; a validation message starts "
           "with the path of the field it is about. HTTP status from the gRPC code: "
           "INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE 400; UNAUTHENTICATED 401; "
           "PERMISSION_DENIED 403; NOT_FOUND 404; a wrong verb 405; ALREADY_EXISTS, ABORTED "
           "409; a body over the size limit 413; RESOURCE_EXHAUSTED 429; CANCELLED 499; "
           "UNIMPLEMENTED 501; UNAVAILABLE 503; DEADLINE_EXCEEDED 504; others 500.\n"
           "- Another tenant's job is reported as NOT_FOUND, like a job that does not exist.";
  }

  static Json ErrorSchema() {
    Json codes = Json::array({"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                              "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"});
    return Json{
        {"type", "object"},
        {"description", "An error: the gRPC status of the call."},
        {"required", Json::array({"code", "status", "message"})},
        {"properties",
         {{"code", {{"type", "integer"}, {"minimum", 0}, {"maximum", 16},
                    {"description", "The gRPC status code (3: INVALID_ARGUMENT, 5: NOT_FOUND, ...)."}}},
          {"status", {{"type", "string"}, {"enum", codes}, {"description", "The code's name."}}},
          {"message",
           {{"type", "string"},
            {"description", "What went wrong. Validation errors start with the field's path "
                            "and a colon: `spec.hyperparameters.lr: must be ...`."}}}}}};
  }

  static Json ErrorResponses() {
    auto error = [](const char* description) {
      return Json{{"description", description},
                  {"content", {{kJson, {{"schema", {{"$ref", Ref("Error")}}}}}}}};
    };
    Json responses;
    responses["BadRequest"] = error(
        "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: a malformed body or parameter, "
        "or a value that fails validation (the message names the field). A request that is not "
        "well-formed HTTP (e.g. a header with control characters) is refused by the HTTP "
        "server itself, before the API, with a plain-text 400.");
    responses["BadRequest"]["content"]["text/plain"] = Json{{"schema", {{"type", "string"}}}};
    responses["Unauthenticated"] = error("No bearer token, or one the coordinator does not know.");
    responses["Unauthenticated"]["headers"] = Json{
        {"WWW-Authenticate", {{"schema", {{"type", "string"}}},
                              {"description", "`Bearer realm=\"ftd\"`"}}}};
    responses["NotFound"] = error("No such job (or one of another tenant).");
    responses["Conflict"] = error(
        "ALREADY_EXISTS: the request_id was used before with a different spec or labels.");
    responses["PayloadTooLarge"] = error("The body exceeds the coordinator's --max-request-bytes.");
    responses["Unavailable"] = error(
        "UNAVAILABLE: the coordinator is starting (replaying its store) or shutting down; retry.");
    responses["Error"] = error("Any other error (see the status mapping in the description).");
    return responses;
  }

  // A query parameter for every scalar field under `type` not bound elsewhere (nested messages
  // as dotted names, as the gateway sets them).
  void QueryParameters(const Descriptor* type, const std::string& prefix,
                       const std::set<std::string>& bound, int depth, Json* params) {
    for (int i = 0; i < type->field_count(); ++i) {
      const FieldDescriptor* f = type->field(i);
      const std::string name = absl::StrCat(prefix, f->json_name());
      if (bound.count(name)) continue;
      if (f->is_map()) continue;  // not expressible in a query
      if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
        if (f->is_repeated() || depth >= 3 ||
            absl::StartsWith(f->message_type()->full_name(), "google.protobuf.")) {
          continue;
        }
        QueryParameters(f->message_type(), name + ".", bound, depth + 1, params);
        continue;
      }
      Json p{{"name", name}, {"in", "query"}, {"required", false},
             {"schema", schemas_.FieldSchema(f)}};
      if (p["schema"].contains("description")) {
        p["description"] = p["schema"]["description"];
        p["schema"].erase("description");
      }
      if (f->is_repeated()) {
        p["style"] = "form";
        p["explode"] = true;
      }
      params->push_back(std::move(p));
    }
  }

  absl::StatusOr<Json> Operation(const Route& route) {
    const MethodDescriptor* method = route.method;
    const Descriptor* input = method->input_type();
    Json op;
    op["operationId"] = method->name();
    op["tags"] = Json::array({method->service()->name()});
    std::string comment = CommentOf(method);
    std::string summary = method->name();
    if (!comment.empty()) {
      summary = std::string(absl::StripSuffix(
          std::string(std::vector<absl::string_view>(absl::StrSplit(comment, '\n'))[0]), "."));
    }
    if (auto it = hand_written_descriptions_.find(method); it != hand_written_descriptions_.end()) {
      absl::StrAppend(&comment, comment.empty() ? "" : "\n\n", it->second);
    }
    op["summary"] = summary;
    op["description"] = absl::StrCat(
        comment, comment.empty() ? "" : "\n\n", "gRPC: `", method->service()->full_name(), "/",
        method->name(), "`.");

    Json params = Json::array();
    std::set<std::string> bound;  // JSON paths taken by the path or the body
    for (const std::string& var : route.variables) {
      const FieldDescriptor* f = FindFieldPath(input, var);
      if (f == nullptr || f->is_repeated() || f->type() == FieldDescriptor::TYPE_MESSAGE) {
        return absl::InvalidArgumentError(absl::StrCat(
            method->full_name(), ": path variable `", var, "` is not a singular scalar field of ",
            input->full_name()));
      }
      const std::string name = JsonPath(input, var);
      bound.insert(name);
      Json schema = schemas_.FieldSchema(f);
      Json p{{"name", name}, {"in", "path"}, {"required", true}};
      if (schema.contains("description")) {
        p["description"] = schema["description"];
        schema.erase("description");
      }
      p["schema"] = std::move(schema);
      params.push_back(std::move(p));
    }
    if (route.body.empty()) {
      QueryParameters(input, "", bound, 0, &params);
    } else if (route.body == "*") {
      Json schema;
      if (bound.empty()) {
        schema = schemas_.MessageSchemaRef(input);
      } else {
        // The body is the request without the fields the path binds.
        schema = Json{{"type", "object"}};
        Json properties = Json::object();
        for (int i = 0; i < input->field_count(); ++i) {
          const FieldDescriptor* f = input->field(i);
          if (!bound.count(f->json_name())) properties[f->json_name()] = schemas_.FieldSchema(f);
        }
        schema["properties"] = std::move(properties);
      }
      op["requestBody"] = Json{{"required", route.variables.empty()},
                               {"content", {{kJson, {{"schema", std::move(schema)}}}}}};
    } else {
      const FieldDescriptor* f = FindFieldPath(input, route.body);
      if (f == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(method->full_name(), ": body `", route.body,
                                                       "` is not a field of ", input->full_name()));
      }
      bound.insert(JsonPath(input, route.body));
      QueryParameters(input, "", bound, 0, &params);
      op["requestBody"] = Json{{"required", true},
                               {"content", {{kJson, {{"schema", schemas_.FieldSchema(f)}}}}}};
    }
    const FieldDescriptor* after_seq = input->FindFieldByName("after_seq");
    if (route.media_type == "text/event-stream" && after_seq != nullptr) {
      params.push_back(Json{{"name", "Last-Event-ID"},
                            {"in", "header"},
                            {"required", false},
                            {"description", absl::StrCat("The `id:` of the last event received: "
                                                         "resumes after it (as `",
                                                         after_seq->json_name(), "`, which wins).")},
                            {"schema", {{"type", "string"}, {"pattern", "^[0-9]+$"}}}});
    }
    if (!params.empty()) op["parameters"] = std::move(params);

    Json ok{{"description", "OK"}};
    if (route.media_type == kJson) {
      ok["content"] = Json{{kJson, {{"schema", schemas_.MessageSchemaRef(method->output_type())}}}};
    } else if (route.media_type == "text/event-stream") {
      ok["description"] = StreamDescription(method->output_type());
      ok["content"] = Json{{"text/event-stream",
                            {{"schema", {{"type", "string"}}},
                             {"x-ftd-event-data", schemas_.MessageSchemaRef(method->output_type())}}}};
    } else {
      ok["content"] = Json{{route.media_type, {{"schema", {{"type", "string"}}}}}};
    }
    Json responses;
    responses["200"] = std::move(ok);
    responses["400"] = ErrorResponseRef("BadRequest");
    responses["401"] = ErrorResponseRef("Unauthenticated");
    if (!route.variables.empty()) responses["404"] = ErrorResponseRef("NotFound");
    if (input->FindFieldByName("request_id") != nullptr) {
      responses["409"] = ErrorResponseRef("Conflict");
    }
    if (!route.body.empty()) responses["413"] = ErrorResponseRef("PayloadTooLarge");
    responses["503"] = ErrorResponseRef("Unavailable");
    responses["default"] = ErrorResponseRef("Error");
    op["responses"] = std::move(responses);
    return op;
  }

  // Server-sent events: `event:` is the name of the oneof member that is set.
  static std::string StreamDescription(const Descriptor* event) {
    std::vector<std::string> kinds;
    if (event->real_oneof_decl_count() == 1) {
      const google::protobuf::OneofDescriptor* oneof = event->oneof_decl(0);
      for (int i = 0; i < oneof->field_count(); ++i) kinds.push_back(oneof->field(i)->name());
    }
    const FieldDescriptor* seq = event->FindFieldByName("seq");
    return absl::StrCat(
        "Server-sent events, one per ", event->full_name(), ": `",
        seq != nullptr ? "id: <seq>`, `" : "",
        kinds.empty() ? "" : absl::StrCat("event: ", absl::StrJoin(kinds, "|"), "`, `"),
        "data: <", event->name(), " as JSON>` (its schema: `x-ftd-event-data`), then a blank "
        "line. `: keepalive` comment lines come when idle. A failure ends the stream with "
        "`event: error` and the status as data. The stream ends after the job's terminal "
        "status event; reconnect with `Last-Event-ID` (or `afterSeq`) to resume without gaps.");
  }

  void AddServiceEndpoints(Json* paths) {
    auto status_body = [](const char* value) {
      return Json{{kJson,
                   {{"schema",
                     {{"type", "object"},
                      {"required", Json::array({"status"})},
                      {"properties",
                       {{"status", {{"type", "string"}, {"enum", Json::array({"SERVING", "NOT_SERVING"})}}}}}}},
                    {"example", {{"status", value}}}}}};
    };
    Json public_security = Json::array();
    (*paths)["/healthz"]["get"] = Json{
        {"operationId", "Healthz"},
        {"tags", Json::array({"Service"})},
        {"summary", "Liveness"},
        {"description", "200 while the process serves HTTP."},
        {"security", public_security},
        {"responses", {{"200", {{"description", "Alive"}, {"content", status_body("SERVING")}}}}}};
    (*paths)["/readyz"]["get"] = Json{
        {"operationId", "Readyz"},
        {"tags", Json::array({"Service"})},
        {"summary", "Readiness"},
        {"description", "200 once the job store has been replayed; 503 before and while "
                        "shutting down."},
        {"security", public_security},
        {"responses",
         {{"200", {{"description", "Ready"}, {"content", status_body("SERVING")}}},
          {"503", {{"description", "Not ready"}, {"content", status_body("NOT_SERVING")}}}}}};
    (*paths)["/metrics"]["get"] = Json{
        {"operationId", "Metrics"},
        {"tags", Json::array({"Service"})},
        {"summary", "Prometheus metrics"},
        {"description", "The Prometheus text exposition format (HEAD is served too)."},
        {"security", public_security},
        {"responses",
         {{"200",
           {{"description", "Metrics"},
            {"content", {{"text/plain", {{"schema", {{"type", "string"}}}}}}}}}}}};
    (*paths)["/v1/openapi.json"]["get"] = Json{
        {"operationId", "GetOpenApiDocument"},
        {"tags", Json::array({"Service"})},
        {"summary", "This document"},
        {"description", "The OpenAPI 3.1 document of this API, generated from the .proto files "
                        "when the coordinator was built."},
        {"security", public_security},
        {"responses",
         {{"200",
           {{"description", "The document"},
            {"content", {{kJson, {{"schema", {{"type", "object"}}}}}}}}}}}};
  }

  const OpenApiOptions& options_;
  SchemaCollector schemas_;
  std::map<const MethodDescriptor*, std::string> hand_written_descriptions_;
};

}  // namespace

absl::StatusOr<nlohmann::ordered_json> BuildOpenApiDocument(const OpenApiOptions& options) {
  DocumentBuilder builder(options);
  return builder.Build();
}

std::string SerializeOpenApiDocument(const nlohmann::ordered_json& document) {
  return document.dump(2) + "\n";
}

}  // namespace ftd::openapi
