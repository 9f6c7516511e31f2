// `ftd-train tokenize`: encode a text file with a model's tokenizer (or decode ids back), for
// checks and debugging.
//
//   tokenize --tokenizer DIR_OR_FILE --input FILE --out ids.json
//            [--decode] [--input-format lines|json] [--no-special-tokens] [--skip-special-tokens]
//
// Encoding: each input line (without its '\n') becomes one JSON array of ids; the output file is
// a JSON array of those arrays, one per line. With --input-format json the input is instead a
// JSON array of strings (texts may then hold newlines). Special tokens (BOS...) are added as HF's
// encode() does by default; --no-special-tokens turns that off.
// Decoding (--decode): the input is such an ids file; the output is a JSON array of strings
// (special tokens kept unless --skip-special-tokens).
#pragma once

namespace ftd::data {

// `argv[0]` is the subcommand name ("tokenize") and is ignored; flags follow. Returns the process
// exit code: 0 on success, 1 on a runtime error, 2 on a usage error (message on stderr).
int RunTokenizeCommand(int argc, char** argv);

}  // namespace ftd::data
