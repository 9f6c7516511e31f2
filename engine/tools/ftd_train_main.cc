// ftd-train: one training rank from a spec file, plus the model tools other components and
// external checks call (init-model, forward, st-copy, tokenize, chat-template).
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "engine/data/chat_template_command.h"
#include "engine/data/tokenize_command.h"
#include "engine/tools/commands.h"
#include "engine/util/device_memory.h"

int main(int argc, char** argv) {
  ftd::engine::ConfigureDeviceAllocator();  // before anything touches CUDA
  // tokenize has its own flag parser (engine/data/tokenize_command.h), shared with ftd-tokenize.
  if (argc > 1 && std::strcmp(argv[1], "tokenize") == 0) return ftd::data::RunTokenizeCommand(argc - 1, argv + 1);
  if (argc > 1 && std::strcmp(argv[1], "chat-template") == 0) {
    return ftd::data::RunChatTemplateCommand(argc - 1, argv + 1);
  }
  CLI::App app{"ftd-train: the ftd training engine (one rank) and model tools"};
  app.require_subcommand(1);
  ftd::engine::RegisterCommands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, or the usage error
    return code == 0 ? 0 : 2;      // exit codes: 0 success, 1 failure, 2 bad usage or spec
  }
  // A rank whose peer died finds the peer's sockets closed: Gloo's next write must fail with
  // EPIPE, an error this rank reports ("error: rank r/N: ..."), not kill it silently by SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  return ftd::engine::RunSelectedCommand(app);
}
