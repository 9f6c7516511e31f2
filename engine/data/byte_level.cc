#include "engine/data/byte_level.h"

#include <array>
#include <cstdint>

#include "engine/data/utf8.h"

namespace ftd::data {
namespace {

struct ByteLevelAlphabet {
  // UTF-8 form of each byte's code point (at most 2 bytes: code points stay below 0x800).
  std::array<std::string, 256> encoded;
  // Code point -> byte, for code points below 0x200 (the alphabet fits there); -1 elsewhere.
  std::array<int16_t, 0x200> decoded;

  ByteLevelAlphabet() {
    decoded.fill(-1);
    int next_extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next_extra++);
      AppendUtf8(cp, &encoded[b]);
      decoded[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

}  // namespace

void AppendByteLevel(std::string_view bytes, std::string* out) {
  const auto& encoded = Alphabet().encoded;
  for (unsigned char b : bytes) out->append(encoded[b]);
}

bool AppendBytesFromByteLevel(std::string_view token, std::string* out) {
  const auto& decoded = Alphabet().decoded;
  const size_t original_size = out->size();
  size_t pos = 0;
  while (pos < token.size()) {
    size_t length;
    const char32_t cp = DecodeUtf8At(token, pos, &length);
    if (cp >= decoded.size() || decoded[cp] < 0) {
      out->resize(original_size);
      return false;
    }
    out->push_back(static_cast<char>(decoded[cp]));
    pos += length;
  }
  return true;
}

}  // namespace ftd::data
