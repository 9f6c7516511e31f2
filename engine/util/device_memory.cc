#include "engine/util/device_memory.h"

#include <ATen/Context.h>

#ifdef FTD_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace ftd::engine {

#ifdef FTD_WITH_CUDA
namespace {
constexpr size_t kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
}
void ResetPeakMemory() {
  if (at::hasCUDA()) c10::cuda::CUDACachingAllocator::resetPeakStats(c10::cuda::current_device());
}
int64_t PeakMemoryBytes() {
  if (!at::hasCUDA()) return 0;
  return c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device()).allocated_bytes[kAggregate].peak;
}
int64_t ReservedMemoryBytes() {
  if (!at::hasCUDA()) return 0;
  return c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device()).reserved_bytes[kAggregate].current;
}
void ReleaseCachedMemory() {
  if (at::hasCUDA()) c10::cuda::CUDACachingAllocator::emptyCache();
}
void DeviceSynchronize() {
  if (at::hasCUDA()) c10::cuda::device_synchronize();
}
#else
void ReleaseCachedMemory() {}
void DeviceSynchronize() {}
void ResetPeakMemory() {}
int64_t PeakMemoryBytes() { return 0; }
int64_t ReservedMemoryBytes() { return 0; }
#endif

}  // namespace ftd::engine
