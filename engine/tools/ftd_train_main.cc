// ftd-train: one training rank from a spec file, plus the model tools other components and
// external checks call (init-model, forward, st-copy, tokenize).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "engine/tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"ftd-train: the ftd training engine (one rank) and model tools"};
  app.require_subcommand(1);
  ftd::engine::RegisterCommands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return ftd::engine::RunSelectedCommand(app);
}
