#include "client/output.h"

#include <algorithm>
#include <cmath>

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ftd::client {
namespace {

void Emit(YAML::Emitter& e, const nlohmann::json& v) {
  if (v.is_object()) {
    if (v.empty()) {
      e << YAML::Flow << YAML::BeginMap << YAML::EndMap;
      return;
    }
    e << YAML::BeginMap;
    for (auto it = v.begin(); it != v.end(); ++it) {
      e << YAML::Key << it.key() << YAML::Value;
      Emit(e, it.value());
    }
    e << YAML::EndMap;
  } else if (v.is_array()) {
    if (v.empty()) {
      e << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
      return;
    }
    e << YAML::BeginSeq;
    for (const auto& x : v) Emit(e, x);
    e << YAML::EndSeq;
  } else if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    // Strings that YAML would read back as another type (numbers as the JSON mapping writes
    // int64s, true/false, null) are quoted: the YAML then converts back to the same JSON.
    double d;
    std::string l = absl::AsciiStrToLower(s);
    if (absl::SimpleAtod(s, &d) || l == "true" || l == "false" || l == "null" || l == "~" ||
        l == "yes" || l == "no" || l == "on" || l == "off" || s.empty()) {
      e << YAML::DoubleQuoted << s;
    } else {
      e << s;
    }
  } else if (v.is_boolean()) {
    e << (v.get<bool>() ? "true" : "false");
  } else if (v.is_number_integer()) {
    e << v.dump();
  } else if (v.is_number()) {
    e << v.dump();
  } else {
    e << YAML::Null;
  }
}

}  // namespace

absl::StatusOr<OutputFormat> ParseOutputFormat(const std::string& text) {
  if (text == "table" || text == "wide") return OutputFormat::kTable;
  if (text == "json") return OutputFormat::kJson;
  if (text == "yaml") return OutputFormat::kYaml;
  if (text == "name") return OutputFormat::kName;
  return absl::InvalidArgumentError(
      absl::StrCat("-o ", text, ": unknown output format (expected table, json, yaml or name)"));
}

nlohmann::json ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(message, &text, options).ok()) return nullptr;
  return nlohmann::json::parse(text, nullptr, false);
}

std::string ToYaml(const nlohmann::json& value) {
  YAML::Emitter e;
  e.SetIndent(2);
  Emit(e, value);
  return e.c_str();
}

void PrintStructured(std::ostream& out, const nlohmann::json& value, OutputFormat format) {
  if (format == OutputFormat::kYaml) {
    out << ToYaml(value) << "\n";
  } else {
    out << value.dump(2) << "\n";
  }
}

void Table::Print(std::ostream& out) const {
  std::vector<size_t> width;
  for (const auto& row : rows_) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows_) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 3, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
}

std::string HumanDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  return absl::StrFormat("%dd%dh", s / 86400, (s % 86400) / 3600);
}

std::string HumanCount(double v) {
  const double a = std::fabs(v);
  if (a < 1000) return absl::StrFormat(a == std::floor(a) ? "%.0f" : "%.1f", v);
  if (a < 1e6) return absl::StrFormat("%.1fk", v / 1e3);
  if (a < 1e9) return absl::StrFormat("%.2fM", v / 1e6);
  if (a < 1e12) return absl::StrFormat("%.2fB", v / 1e9);
  return absl::StrFormat("%.2fT", v / 1e12);
}

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", b) : absl::StrFormat("%.1f %s", b, units[u]);
}

std::string Age(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  double s = absl::ToDoubleSeconds(absl::Now() - absl::FromUnixSeconds(t.seconds()));
  if (s < 0) s = 0;
  std::string d = HumanDuration(s);
  // Ages are coarse: "3m" rather than "3m12s".
  if (s >= 60 && d.size() > 3 && d.back() == 's') d = d.substr(0, d.find('m') + 1);
  return d;
}

std::string TimeString(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(t.seconds()), absl::UTCTimeZone());
}

}  // namespace ftd::client
