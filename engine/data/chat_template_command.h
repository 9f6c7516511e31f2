// `ftd-train chat-template`: render conversations with a model's own chat template, as
// transformers' apply_chat_template does, to check what training will see.
//
//   chat-template --tokenizer DIR --input conversations.jsonl --out rendered.jsonl
//                 [--add-generation-prompt] [--kwargs JSON] [--ids] [--template FILE]
//                 [--raw] [--keep-going]
//
// Each input line {"messages": [...], "tools"?: [...], "documents"?: [...]} gives one output
// line {"text": "..."}; with --ids also "input_ids", "labels" (-100 where no loss) and
// "assistant_masks" (1 on trained tokens). --kwargs is a JSON object of extra template
// variables (e.g. {"enable_thinking": false}). --template FILE renders with that template
// instead of the tokenizer's (then --tokenizer is optional, without special tokens).
// --raw passes each line's object to the template as its variables, untouched (for checking the
// interpreter itself). --keep-going writes {"error": "..."} for a failing line and goes on
// (exit 1 at the end); otherwise the first error stops the command, naming its line.
#pragma once

namespace ftd::data {

// `argv[0]` is the subcommand name and is ignored. Exit code: 0 success, 1 runtime error,
// 2 usage error.
int RunChatTemplateCommand(int argc, char** argv);

}  // namespace ftd::data
