// ftd-tokenize: the `ftd-train tokenize` subcommand as its own small binary (no LibTorch), so the
// tokenizer parity tests run without building the engine. Accepts `ftd-tokenize [tokenize] FLAGS`.
#include <cstring>

#include "engine/data/tokenize_command.h"

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "tokenize") == 0) return ftd::data::RunTokenizeCommand(argc - 1, argv + 1);
  return ftd::data::RunTokenizeCommand(argc, argv);
}
