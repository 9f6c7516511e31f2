// The GPT-2 byte-to-unicode alphabet that byte-level BPE tokenizers (ByteLevel pre-tokenizer and
// decoder) use: every byte maps to a printable code point, so merges never see raw bytes.
#pragma once

#include <string>
#include <string_view>

namespace ftd::data {

// Appends the byte-level form of `bytes` (each byte as its mapped code point, UTF-8 encoded).
void AppendByteLevel(std::string_view bytes, std::string* out);

// Appends the bytes behind a byte-level `token`. Returns false (and appends nothing) when some
// character of the token is outside the alphabet; HF then keeps the token's own bytes.
bool AppendBytesFromByteLevel(std::string_view token, std::string* out);

}  // namespace ftd::data
