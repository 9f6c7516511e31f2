// Stochastic rounding of fp32 values to bf16 for the compact_sr precision policy
// (common/precision_policy.h): a bf16 parameter without a master's low half takes each update
// rounded up or down at random, with the probabilities that make it exact on average, so that
// updates below half an ulp survive in expectation instead of being lost (bf16 round to nearest
// drops most of a fine-tuning lr's updates).
//
// The random bits are a hash of (salt, step, element index), not a generator's state: the CUDA
// kernels and the ATen reference draw the same bits, a step replays identically from a CUDA
// graph, and a parameter's element gets the same bits whether the optimizer holds it whole or a
// ZeRO shard of it (the index is the element's offset in the parameter, the salt a hash of its
// name). Plain C++ usable from host and device code.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FTD_SR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FTD_SR_HOST_DEVICE inline
#endif

namespace ftd::kernels::stochastic_round {

// A 32-bit integer hash with full avalanche (Wellons' "lowbias32").
FTD_SR_HOST_DEVICE uint32_t Mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The key of one parameter's step: `salt` names the parameter (SaltOf), `step` is the
// optimizer's step count for it (already incremented).
FTD_SR_HOST_DEVICE uint32_t StepKey(uint32_t salt, uint32_t step) { return Mix32(salt ^ Mix32(step + 0x9e3779b9u)); }

// 32 random bits for elements 2·pair and 2·pair + 1 of the parameter under `key`: the low half
// is the first's, the high half the second's.
FTD_SR_HOST_DEVICE uint32_t PairBits(uint32_t key, uint64_t pair) {
  return Mix32(static_cast<uint32_t>(pair) ^ (key + static_cast<uint32_t>(pair >> 32) * 0x85ebca6bu));
}

// 16 random bits for element `index` of the parameter under `key` (its half of PairBits).
FTD_SR_HOST_DEVICE uint32_t RandomBits(uint32_t key, int64_t index) {
  const uint32_t h = PairBits(key, static_cast<uint64_t>(index) >> 1);
  return (index & 1) ? (h >> 16) : (h & 0xffffu);
}

// The bf16 bit pattern of the fp32 value with bit pattern `bits`, rounded toward zero after
// adding `random16` to the 16 bits dropped: it rounds away from zero with probability
// (dropped bits) / 2^16, so the expected result is the fp32 value. Infinities and NaNs stay so.
FTD_SR_HOST_DEVICE uint16_t RoundBits(uint32_t bits, uint32_t random16) {
  if ((bits & 0x7f800000u) == 0x7f800000u) return static_cast<uint16_t>(bits >> 16);  // inf, NaN: truncate
  return static_cast<uint16_t>((bits + random16) >> 16);
}

// A parameter's salt from its name (FNV-1a).
inline uint32_t SaltOf(const char* name) {
  uint32_t h = 2166136261u;
  for (const char* c = name; *c != '\0'; ++c) h = (h ^ static_cast<uint8_t>(*c)) * 16777619u;
  return h;
}

}  // namespace ftd::kernels::stochastic_round
