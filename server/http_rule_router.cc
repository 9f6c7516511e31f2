#include "server/http_rule_router.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "google/api/annotations.pb.h"
#include "google/protobuf/reflection.h"

namespace ftd::server {
namespace {

using google::protobuf::FieldDescriptor;

absl::StatusOr<std::vector<HttpRoute::Part>> ParseTemplate(const std::string& tmpl) {
  std::vector<HttpRoute::Part> parts;
  size_t pos = 0;
  while (pos < tmpl.size()) {
    size_t open = tmpl.find('{', pos);
    if (open == std::string::npos) {
      parts.push_back({false, tmpl.substr(pos)});
      break;
    }
    if (open > pos) parts.push_back({false, tmpl.substr(pos, open - pos)});
    size_t close = tmpl.find('}', open);
    if (close == std::string::npos) return absl::InvalidArgumentError("unclosed `{`");
    std::string var = tmpl.substr(open + 1, close - open - 1);
    if (var.empty() || var.find('=') != std::string::npos) {
      return absl::InvalidArgumentError("only {field} variables are supported");
    }
    if (!parts.empty() && parts.back().is_variable) {
      return absl::InvalidArgumentError("two adjacent variables");
    }
    parts.push_back({true, var});
    pos = close + 1;
  }
  return parts;
}

// Matches parts[i..] against path[pos..], appending variables.
bool MatchParts(const std::vector<HttpRoute::Part>& parts, size_t i, absl::string_view path,
                std::vector<std::pair<std::string, std::string>>* vars) {
  if (i == parts.size()) return path.empty();
  const HttpRoute::Part& part = parts[i];
  if (!part.is_variable) {
    if (!absl::StartsWith(path, part.text)) return false;
    return MatchParts(parts, i + 1, path.substr(part.text.size()), vars);
  }
  // A variable is one non-empty path segment without `:` (the custom-verb separator).
  size_t end = 0;
  while (end < path.size() && path[end] != '/' && path[end] != ':') ++end;
  if (end == 0) return false;
  vars->emplace_back(part.text, std::string(path.substr(0, end)));
  if (MatchParts(parts, i + 1, path.substr(end), vars)) return true;
  vars->pop_back();
  return false;
}

const FieldDescriptor* FindField(const google::protobuf::Descriptor* type, absl::string_view name) {
  const std::string n(name);
  const FieldDescriptor* field = type->FindFieldByName(n);
  if (field == nullptr) field = type->FindFieldByCamelcaseName(n);
  return field;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::StatusOr<std::string> UrlDecode(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%') {
      int hi = i + 1 < s.size() ? HexValue(s[i + 1]) : -1;
      int lo = i + 2 < s.size() ? HexValue(s[i + 2]) : -1;
      if (hi < 0 || lo < 0) return absl::InvalidArgumentError("query: bad %-escape");
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<HttpRuleRouter> HttpRuleRouter::Create(
    const google::protobuf::ServiceDescriptor* service) {
  HttpRuleRouter router;
  for (int i = 0; i < service->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* method = service->method(i);
    if (!method->options().HasExtension(google::api::http)) continue;
    const google::api::HttpRule& rule = method->options().GetExtension(google::api::http);
    HttpRoute route;
    route.method = method;
    route.body = rule.body();
    switch (rule.pattern_case()) {
      case google::api::HttpRule::kGet: route.verb = "GET"; route.path_template = rule.get(); break;
      case google::api::HttpRule::kPost: route.verb = "POST"; route.path_template = rule.post(); break;
      case google::api::HttpRule::kPut: route.verb = "PUT"; route.path_template = rule.put(); break;
      case google::api::HttpRule::kDelete: route.verb = "DELETE"; route.path_template = rule.delete_(); break;
      case google::api::HttpRule::kPatch: route.verb = "PATCH"; route.path_template = rule.patch(); break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(method->full_name(), ": unsupported google.api.http pattern"));
    }
    absl::StatusOr<std::vector<HttpRoute::Part>> parts = ParseTemplate(route.path_template);
    if (!parts.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(method->full_name(), ": http template `",
                                                     route.path_template, "`: ",
                                                     parts.status().message()));
    }
    route.parts = *std::move(parts);
    router.routes_.push_back(std::move(route));
  }
  return router;
}

absl::StatusOr<RouteMatch> HttpRuleRouter::Match(absl::string_view verb,
                                                 absl::string_view path) const {
  bool path_matched = false;
  for (const HttpRoute& route : routes_) {
    RouteMatch match;
    if (!MatchParts(route.parts, 0, path, &match.variables)) continue;
    if (route.verb != verb) {
      path_matched = true;
      continue;
    }
    match.route = &route;
    return match;
  }
  if (path_matched) {
    return absl::UnimplementedError(absl::StrCat("method ", verb, " is not allowed on ", path));
  }
  return absl::NotFoundError(absl::StrCat("no route for ", verb, " ", path));
}

absl::Status SetFieldFromString(google::protobuf::Message* message, absl::string_view path,
                                absl::string_view value) {
  std::vector<absl::string_view> names = absl::StrSplit(path, '.');
  google::protobuf::Message* target = message;
  for (size_t i = 0; i + 1 < names.size(); ++i) {
    const FieldDescriptor* field = FindField(target->GetDescriptor(), names[i]);
    if (field == nullptr || field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE ||
        field->is_repeated()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown parameter"));
    }
    target = target->GetReflection()->MutableMessage(target, field);
  }
  const FieldDescriptor* field = FindField(target->GetDescriptor(), names.back());
  if (field == nullptr || field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unknown parameter"));
  }
  const google::protobuf::Reflection* refl = target->GetReflection();
  const bool repeated = field->is_repeated();
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string v(value);
      repeated ? refl->AddString(target, field, v) : refl->SetString(target, field, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("not a 32-bit integer");
      repeated ? refl->AddInt32(target, field, v) : refl->SetInt32(target, field, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("not a 64-bit integer");
      repeated ? refl->AddInt64(target, field, v) : refl->SetInt64(target, field, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("not an unsigned 32-bit integer");
      repeated ? refl->AddUInt32(target, field, v) : refl->SetUInt32(target, field, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("not an unsigned 64-bit integer");
      repeated ? refl->AddUInt64(target, field, v) : refl->SetUInt64(target, field, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      double v;
      if (!absl::SimpleAtod(value, &v)) return bad("not a number");
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_FLOAT) {
        repeated ? refl->AddFloat(target, field, static_cast<float>(v))
                 : refl->SetFloat(target, field, static_cast<float>(v));
      } else {
        repeated ? refl->AddDouble(target, field, v) : refl->SetDouble(target, field, v);
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool v;
      if (value == "true" || value == "1") {
        v = true;
      } else if (value == "false" || value == "0") {
        v = false;
      } else {
        return bad("must be true or false");
      }
      repeated ? refl->AddBool(target, field, v) : refl->SetBool(target, field, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const google::protobuf::EnumValueDescriptor* ev =
          field->enum_type()->FindValueByName(std::string(value));
      int number;
      if (ev == nullptr && absl::SimpleAtoi(value, &number)) {
        ev = field->enum_type()->FindValueByNumber(number);
      }
      if (ev == nullptr) return bad(absl::StrCat("not a value of ", field->enum_type()->name()));
      repeated ? refl->AddEnum(target, field, ev) : refl->SetEnum(target, field, ev);
      break;
    }
    default:
      return bad("unsupported parameter type");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQueryString(
    absl::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  for (absl::string_view item : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    size_t eq = item.find('=');
    absl::string_view key = item.substr(0, eq);
    absl::string_view value = eq == absl::string_view::npos ? "" : item.substr(eq + 1);
    FTD_ASSIGN_OR_RETURN(std::string k, UrlDecode(key));
    FTD_ASSIGN_OR_RETURN(std::string v, UrlDecode(value));
    out.emplace_back(std::move(k), std::move(v));
  }
  return out;
}

}  // namespace ftd::server
