#include "engine/util/device_memory.h"

#include <cstdlib>

#include <ATen/Context.h>

#ifdef FTD_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace ftd::engine {

namespace {
// PYTORCH_ALLOC_CONF is the newer name; c10 reads it before the CUDA-specific one.
constexpr const char* kAllocatorVariables[] = {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"};
constexpr char kDefaultAllocatorSetting[] = "expandable_segments:True";
}  // namespace

std::string DeviceAllocatorSetting() {
  for (const char* name : kAllocatorVariables) {
    if (const char* value = std::getenv(name)) return std::string(name) + "=" + value;
  }
  return "default";
}

std::string ConfigureDeviceAllocator() {
  // Any setting of the user's, even empty, is kept.
  if (DeviceAllocatorSetting() == "default") setenv("PYTORCH_CUDA_ALLOC_CONF", kDefaultAllocatorSetting, 0);
  return DeviceAllocatorSetting();
}

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
