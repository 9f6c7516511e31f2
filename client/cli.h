// ftctl's command tree. RunFtctl builds the CLI11 app (global flags, every subcommand with
// its --help examples), runs the chosen command and returns the process exit code:
//   0 ok / job SUCCEEDED, 1 error, 2 usage error, 3 job FAILED, 4 job CANCELLED,
//   5 `plan`: the job does not fit in --gpu-memory.
#pragma once

#include <functional>
#include <iosfwd>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "client/client_options.h"
#include "client/connection.h"
#include "client/output.h"

namespace ftd::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNoFit = 5;

// State shared by the commands of one invocation.
struct Cli {
  ClientOptions options;
  std::string output = "table";
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  std::function<int()> action;  // set by the chosen subcommand's callback
  std::unique_ptr<Connection> connection;

  // Resolves the options (flags > env > config file) and connects (lazily, once).
  absl::StatusOr<Connection*> Connect();
  absl::StatusOr<OutputFormat> Format() const { return ParseOutputFormat(output); }
  // Prints "ftctl: MESSAGE" on stderr and returns kExitError.
  int Fail(const std::string& message) const;
};

int RunFtctl(int argc, char** argv);

// Subcommand registration (one file each).
void AddJobCommands(CLI::App& app, Cli& cli);
void AddModelCommands(CLI::App& app, Cli& cli, const std::string& argv0);
void AddCompletionCommand(CLI::App& app, Cli& cli);

}  // namespace ftd::client
