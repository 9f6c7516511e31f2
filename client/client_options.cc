#include "client/client_options.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <yaml-cpp/yaml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"

namespace ftd::client {
namespace {

std::string Env(const char* name) {
  const char* v = ::getenv(name);
  return v == nullptr ? "" : v;
}

std::string ExpandHome(const std::string& path) {
  if (absl::StartsWith(path, "~/")) return absl::StrCat(Env("HOME"), path.substr(1));
  return path;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

std::string DefaultConfigPath() {
  if (std::string p = Env("FTD_CONFIG"); !p.empty()) return p;
  if (std::string x = Env("XDG_CONFIG_HOME"); !x.empty()) return x + "/ftd/config.yaml";
  return Env("HOME") + "/.config/ftd/config.yaml";
}

absl::Status ResolveClientOptions(ClientOptions* o) {
  // Environment.
  if (o->endpoint.empty()) o->endpoint = Env("FTD_ENDPOINT");
  if (o->token.empty() && o->token_file.empty()) o->token = Env("FTD_TOKEN");
  if (o->ca_cert.empty()) o->ca_cert = Env("FTD_CA_CERT");

  // Config file: an explicit one must exist; the default one is optional.
  const bool explicit_file = !o->config_file.empty() || !Env("FTD_CONFIG").empty();
  const std::string path = ExpandHome(o->config_file.empty() ? DefaultConfigPath() : o->config_file);
  if (explicit_file || Exists(path)) {
    absl::StatusOr<std::string> text = ReadFileToString(path);
    if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read the config file"));
    YAML::Node root;
    try {
      root = YAML::Load(*text);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", e.mark.line + 1, ": not valid YAML: ", e.msg));
    }
    if (!root.IsNull() && !root.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": expected a mapping (endpoint:, token:, ...)"));
    }
    o->config_used = path;
    for (auto it = root.begin(); root.IsMap() && it != root.end(); ++it) {
      const std::string key = it->first.Scalar();
      const int line = it->first.Mark().line + 1;
      auto bad = [&](const std::string& what) {
        return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": ", key, ": ", what));
      };
      if (!it->second.IsScalar()) return bad("expected a single value");
      const std::string v = it->second.Scalar();
      auto as_bool = [&](bool* out) -> absl::Status {
        std::string l = absl::AsciiStrToLower(v);
        if (l == "true" || l == "yes" || l == "on") *out = true;
        else if (l == "false" || l == "no" || l == "off") *out = false;
        else return bad("expected true or false");
        return absl::OkStatus();
      };
      if (key == "endpoint") {
        if (o->endpoint.empty()) o->endpoint = v;
      } else if (key == "token") {
        if (o->token.empty() && o->token_file.empty()) o->token = v;
      } else if (key == "token_file") {
        if (o->token.empty() && o->token_file.empty()) o->token_file = ExpandHome(v);
      } else if (key == "ca_cert") {
        if (o->ca_cert.empty()) o->ca_cert = ExpandHome(v);
      } else if (key == "tls") {
        bool b = false;
        if (absl::Status s = as_bool(&b); !s.ok()) return s;
        o->tls = o->tls || b;
      } else if (key == "insecure_skip_verify") {
        bool b = false;
        if (absl::Status s = as_bool(&b); !s.ok()) return s;
        o->insecure_skip_verify = o->insecure_skip_verify || b;
      } else if (key == "server_name") {
        if (o->server_name.empty()) o->server_name = v;
      } else if (key == "timeout") {
        double t;
        if (!absl::SimpleAtod(v, &t) || t <= 0) return bad("expected a positive number of seconds");
        if (o->timeout_seconds <= 0) o->timeout_seconds = t;
      } else {
        return bad("unknown key (expected endpoint, token, token_file, tls, ca_cert, "
                   "insecure_skip_verify, server_name, timeout)");
      }
    }
  }

  if (!o->token_file.empty() && o->token.empty()) {
    absl::StatusOr<std::string> t = ReadFileToString(ExpandHome(o->token_file));
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(o->token_file, ": cannot read the token file"));
    o->token = std::string(absl::StripAsciiWhitespace(*t));
  }
  if (o->endpoint.empty()) o->endpoint = kDefaultEndpoint;
  absl::string_view ep = o->endpoint;
  if (absl::ConsumePrefix(&ep, "https://")) o->tls = true;
  absl::ConsumePrefix(&ep, "http://");
  absl::ConsumePrefix(&ep, "grpc://");
  while (absl::ConsumeSuffix(&ep, "/")) {
  }
  if (ep.empty() || ep.back() == ':' || (ep.find(':') == absl::string_view::npos && !absl::StartsWith(ep, "unix:"))) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint \"", std::string(ep), "\": expected HOST:PORT"));
  }
  o->endpoint = std::string(ep);
  if (!o->ca_cert.empty() || o->insecure_skip_verify) o->tls = true;
  if (o->timeout_seconds <= 0) o->timeout_seconds = 30;
  return absl::OkStatus();
}

}  // namespace ftd::client
