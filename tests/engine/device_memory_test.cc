// ConfigureDeviceAllocator: ftd's allocator default (expandable segments) applies only when the
// user chose no allocator configuration. CTest runs each test in its own process, so the
// environment changes here stay in it.
#include "engine/util/device_memory.h"

#include <cstdlib>

#include <gtest/gtest.h>

namespace ftd::engine {
namespace {

void ClearAllocatorVariables() {
  unsetenv("PYTORCH_ALLOC_CONF");
  unsetenv("PYTORCH_CUDA_ALLOC_CONF");
}

TEST(DeviceAllocator, ExpandableSegmentsWhenTheUserChoseNothing) {
  ClearAllocatorVariables();
  EXPECT_EQ(DeviceAllocatorSetting(), "default");
  EXPECT_EQ(ConfigureDeviceAllocator(), "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True");
  ASSERT_NE(std::getenv("PYTORCH_CUDA_ALLOC_CONF"), nullptr);
  EXPECT_STREQ(std::getenv("PYTORCH_CUDA_ALLOC_CONF"), "expandable_segments:True");
  EXPECT_EQ(std::getenv("PYTORCH_ALLOC_CONF"), nullptr);
}

TEST(DeviceAllocator, KeepsTheUsersCudaSettingEvenEmpty) {
  ClearAllocatorVariables();
  setenv("PYTORCH_CUDA_ALLOC_CONF", "", 1);
  EXPECT_EQ(ConfigureDeviceAllocator(), "PYTORCH_CUDA_ALLOC_CONF=");
  EXPECT_STREQ(std::getenv("PYTORCH_CUDA_ALLOC_CONF"), "");
  setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:256", 1);
  EXPECT_EQ(ConfigureDeviceAllocator(), "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:256");
}

TEST(DeviceAllocator, KeepsTheUsersGenericSettingAndAddsNothing) {
  ClearAllocatorVariables();
  setenv("PYTORCH_ALLOC_CONF", "expandable_segments:False", 1);
  EXPECT_EQ(ConfigureDeviceAllocator(), "PYTORCH_ALLOC_CONF=expandable_segments:False");
  EXPECT_EQ(std::getenv("PYTORCH_CUDA_ALLOC_CONF"), nullptr);
}

}  // namespace
}  // namespace ftd::engine
