// ftd-tokenize: the `ftd-train tokenize` and `ftd-train chat-template` subcommands as their own
// small binary (no LibTorch), so the tokenizer and chat-template parity tests run without building
// the engine. Accepts `ftd-tokenize [tokenize] FLAGS` and `ftd-tokenize chat-template FLAGS`.
#include <cstring>

#include "engine/data/chat_template_command.h"
#include "engine/data/tokenize_command.h"

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "chat-template") == 0) {
    return ftd::data::RunChatTemplateCommand(argc - 1, argv + 1);
  }
  if (argc > 1 && std::strcmp(argv[1], "tokenize") == 0) return ftd::data::RunTokenizeCommand(argc - 1, argv + 1);
  return ftd::data::RunTokenizeCommand(argc, argv);
}
