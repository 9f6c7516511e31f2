// The flags of the small subcommands (`ftd-train tokenize`, `chat-template`): `--name VALUE`
// options and `--name` switches, described by a table instead of an if-chain per command.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace ftd {

struct CommandFlag {
  const char* name;             // "--input"
  std::string* value = nullptr;  // an option: the next argument is stored here
  bool* flag = nullptr;          // else a switch: *flag = switch_value when present
  bool switch_value = true;
};

// Parses argv[1..argc) against `flags`: INVALID_ARGUMENT naming an unknown flag or an option
// without its value.
absl::Status ParseCommandFlags(int argc, char** argv, const std::vector<CommandFlag>& flags);

}  // namespace ftd
