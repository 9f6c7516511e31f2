#include "engine/data/epoch_order.h"

#include <numeric>

namespace ftd::data {
namespace {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Uniform in [0, bound) without modulo bias (rejection sampling).
uint64_t Below(uint64_t bound, uint64_t* state) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t value;
  do {
    value = SplitMix64(state);
  } while (value >= limit);
  return value % bound;
}

}  // namespace

std::vector<uint32_t> EpochOrder(uint32_t num_documents, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<uint32_t> order(num_documents);
  std::iota(order.begin(), order.end(), 0u);
  if (!shuffle || num_documents < 2) return order;
  uint64_t state = seed ^ (0xD1B54A32D192ED03ULL * static_cast<uint64_t>(epoch + 1));
  for (uint32_t i = num_documents - 1; i > 0; --i) {
    const auto j = static_cast<uint32_t>(Below(static_cast<uint64_t>(i) + 1, &state));
    std::swap(order[i], order[j]);
  }
  return order;
}

}  // namespace ftd::data
