// Output of ftctl: -o table|json|yaml|name. JSON and YAML use the protobuf JSON mapping with
// proto field names (snake_case), so the `spec` of `ftctl get ID -o yaml` is a valid job file.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace ftd::client {

enum class OutputFormat { kTable, kJson, kYaml, kName };

absl::StatusOr<OutputFormat> ParseOutputFormat(const std::string& text);

// The message as JSON (protobuf mapping, proto field names, enums by name).
nlohmann::json ToJson(const google::protobuf::Message& message);
// JSON value as block YAML (strings quoted only when needed).
std::string ToYaml(const nlohmann::json& value);
// Prints `value` as JSON (indented) or YAML, with a trailing newline.
void PrintStructured(std::ostream& out, const nlohmann::json& value, OutputFormat format);

// Left-aligned columns separated by three spaces, as `kubectl get`.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print(std::ostream& out) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// Human formatting.
std::string HumanDuration(double seconds);           // "45s", "3m12s", "2h05m", "3d4h"
std::string HumanCount(double value);                // "950", "12.3k", "4.56M", "30.5B"
std::string HumanBytes(double bytes);                // "512 B", "1.5 KiB", "3.2 GiB"
std::string Age(const google::protobuf::Timestamp& t);  // time since t: "5m", "-" when unset
std::string TimeString(const google::protobuf::Timestamp& t);  // RFC 3339 UTC, "-" when unset

}  // namespace ftd::client
