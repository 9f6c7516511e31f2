// The subcommands of ftd-train, registered on a CLI11 app.
#pragma once

#include <CLI/App.hpp>

namespace ftd::engine {

void RegisterCommands(CLI::App& app);
// Runs the subcommand that was parsed; returns the process exit code.
int RunSelectedCommand(CLI::App& app);

}  // namespace ftd::engine
