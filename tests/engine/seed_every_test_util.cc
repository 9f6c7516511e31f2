// Seeds ATen's default generators (CPU and CUDA) before every engine test. Left alone, libtorch
// seeds the CPU generator nondeterministically at start-up, so a test that draws from it
// (tensor.normal_(), at::randn without a generator) would check different numbers on every run,
// and a bound that holds for most draws would fail now and then (Lora.GptOssExpertAdaptersInHfColumns
// did, 2 runs in ~25). With this, each test sees the same numbers whether it runs alone (as CTest
// runs it) or after others in one process.
#include <ATen/Context.h>

#include "gtest/gtest.h"

namespace {

class SeedEveryTest : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo& /*test*/) override { at::manual_seed(0); }
};

// GoogleTest owns the listeners appended to it and deletes them at exit.
const bool kRegistered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedEveryTest);
  return true;
}();

}  // namespace
