// GPU memory statistics of the current device (zeros on CPU-only builds).
#pragma once

#include <cstdint>

namespace ftd::engine {

void ResetPeakMemory();
int64_t PeakMemoryBytes();      // max allocated since the last reset
int64_t ReservedMemoryBytes();  // held by the caching allocator now
// Returns the caching allocator's unused blocks to the driver (CUDA graph pools keep theirs).
void ReleaseCachedMemory();
// Waits for the current device's work (no-op on CPU-only builds).
void DeviceSynchronize();

}  // namespace ftd::engine
