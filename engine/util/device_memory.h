// GPU memory statistics of the current device (zeros on CPU-only builds).
#pragma once

#include <cstdint>

namespace ftd::engine {

void ResetPeakMemory();
int64_t PeakMemoryBytes();      // max allocated since the last reset
int64_t ReservedMemoryBytes();  // held by the caching allocator now
// Waits for the current device's work (no-op on CPU-only builds).
void DeviceSynchronize();

}  // namespace ftd::engine
