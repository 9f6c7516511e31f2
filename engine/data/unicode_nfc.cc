#include "engine/data/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/data/utf8.h"

namespace ftd::data {
namespace {

struct CombiningClassRun {
  char32_t first;
  char32_t last;
  uint8_t combining_class;
};
struct DecompositionEntry {
  char32_t code_point;
  uint8_t length;
  char32_t parts[4];
};
struct CompositionEntry {
  char32_t first;
  char32_t second;
  char32_t composed;
};

#include "data/unicode_nfc_tables.inc"

constexpr char32_t kHangulSBase = 0xAC00, kHangulLBase = 0x1100, kHangulVBase = 0x1161,
                   kHangulTBase = 0x11A7;
constexpr int kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr int kHangulNCount = kHangulVCount * kHangulTCount;
constexpr int kHangulSCount = kHangulLCount * kHangulNCount;

struct Tables {
  absl::flat_hash_map<char32_t, const DecompositionEntry*> decompositions;
  absl::flat_hash_map<uint64_t, char32_t> compositions;
  // Code points whose presence means the text may not be in NFC (or NFD): anything with a
  // decomposition, a non-zero combining class, or that composes with a previous character.
  absl::flat_hash_set<char32_t> suspicious;

  Tables() {
    for (const auto& entry : kDecompositions) {
      decompositions[entry.code_point] = &entry;
      suspicious.insert(entry.code_point);
    }
    for (const auto& entry : kCompositions) {
      compositions[(static_cast<uint64_t>(entry.first) << 32) | entry.second] = entry.composed;
      suspicious.insert(entry.second);
    }
    for (const auto& run : kCombiningClassRuns) {
      for (char32_t cp = run.first; cp <= run.last; ++cp) suspicious.insert(cp);
    }
  }
};

const Tables& GetTables() {
  static const Tables* tables = new Tables();
  return *tables;
}

uint8_t CombiningClass(char32_t cp) {
  const auto* begin = std::begin(kCombiningClassRuns);
  const auto* end = std::end(kCombiningClassRuns);
  const auto* it = std::upper_bound(begin, end, cp, [](char32_t value, const CombiningClassRun& run) {
    return value < run.first;
  });
  if (it == begin) return 0;
  --it;
  return cp <= it->last ? it->combining_class : 0;
}

bool IsHangulRelated(char32_t cp) {
  return (cp >= 0x1100 && cp <= 0x11FF) || (cp >= kHangulSBase && cp < kHangulSBase + kHangulSCount);
}

// True when every code point is ASCII or known not to take part in normalization.
bool MayNeedNormalization(std::string_view text) {
  bool ascii = true;
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return false;
  const Tables& tables = GetTables();
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t length;
    const char32_t cp = DecodeUtf8At(text, pos, &length);
    if (IsHangulRelated(cp) || tables.suspicious.contains(cp)) return true;
    pos += length;
  }
  return false;
}

void DecomposeInto(char32_t cp, std::vector<char32_t>* out) {
  if (cp >= kHangulSBase && cp < kHangulSBase + kHangulSCount) {
    const int index = static_cast<int>(cp - kHangulSBase);
    out->push_back(kHangulLBase + index / kHangulNCount);
    out->push_back(kHangulVBase + (index % kHangulNCount) / kHangulTCount);
    const int t = index % kHangulTCount;
    if (t != 0) out->push_back(kHangulTBase + t);
    return;
  }
  const auto& decompositions = GetTables().decompositions;
  auto it = decompositions.find(cp);
  if (it == decompositions.end()) {
    out->push_back(cp);
    return;
  }
  for (int i = 0; i < it->second->length; ++i) DecomposeInto(it->second->parts[i], out);
}

// Full canonical decomposition followed by the canonical ordering of combining marks.
std::vector<char32_t> DecomposeCanonical(std::string_view text) {
  std::vector<char32_t> out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t length;
    DecomposeInto(DecodeUtf8At(text, pos, &length), &out);
    pos += length;
  }
  // Stable sort of each run of non-starters by combining class.
  size_t i = 0;
  while (i < out.size()) {
    if (CombiningClass(out[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < out.size() && CombiningClass(out[j]) != 0) ++j;
    std::stable_sort(out.begin() + i, out.begin() + j,
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  return out;
}

bool ComposePair(char32_t first, char32_t second, char32_t* composed) {
  // Hangul LV and LVT.
  if (first >= kHangulLBase && first < kHangulLBase + kHangulLCount && second >= kHangulVBase &&
      second < kHangulVBase + kHangulVCount) {
    *composed = kHangulSBase +
                ((first - kHangulLBase) * kHangulVCount + (second - kHangulVBase)) * kHangulTCount;
    return true;
  }
  if (first >= kHangulSBase && first < kHangulSBase + kHangulSCount &&
      (first - kHangulSBase) % kHangulTCount == 0 && second > kHangulTBase &&
      second < kHangulTBase + kHangulTCount) {
    *composed = first + (second - kHangulTBase);
    return true;
  }
  const auto& compositions = GetTables().compositions;
  auto it = compositions.find((static_cast<uint64_t>(first) << 32) | second);
  if (it == compositions.end()) return false;
  *composed = it->second;
  return true;
}

}  // namespace

std::string NormalizeNfd(std::string_view text) {
  if (!MayNeedNormalization(text)) return std::string(text);
  return EncodeUtf8(DecomposeCanonical(text));
}

std::string NormalizeNfc(std::string_view text) {
  if (!MayNeedNormalization(text)) return std::string(text);
  std::vector<char32_t> chars = DecomposeCanonical(text);
  // Canonical composition (UAX #15): each character composes with the last starter unless a
  // character in between blocks it (same or higher combining class, or a starter).
  size_t starter = 0;
  bool have_starter = false;
  int last_class = -1;
  size_t write = 0;
  for (size_t read = 0; read < chars.size(); ++read) {
    const char32_t cp = chars[read];
    const int klass = CombiningClass(cp);
    char32_t composed;
    const bool blocked = last_class != -1 && (last_class >= klass || last_class == 0);
    if (have_starter && !blocked && ComposePair(chars[starter], cp, &composed)) {
      chars[starter] = composed;
      continue;
    }
    if (klass == 0) {
      starter = write;
      have_starter = true;
      last_class = -1;
    } else {
      last_class = klass;
    }
    chars[write++] = cp;
  }
  chars.resize(write);
  return EncodeUtf8(chars);
}

const char* UnicodeTablesVersion() { return FTD_UNICODE_VERSION; }

}  // namespace ftd::data
