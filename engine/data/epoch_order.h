// The order documents are visited in each epoch: a permutation drawn from (seed, epoch) with our
// own Fisher-Yates over SplitMix64, so it is the same on every platform and standard library
// (std::shuffle's algorithm is implementation-defined).
#pragma once

#include <cstdint>
#include <vector>

namespace ftd::data {

// Document indices [0, num_documents) in epoch `epoch`'s order; identity when !shuffle.
std::vector<uint32_t> EpochOrder(uint32_t num_documents, uint64_t seed, int64_t epoch, bool shuffle);

}  // namespace ftd::data
