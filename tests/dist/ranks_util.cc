#include "tests/dist/ranks_util.h"

#include <atomic>
#include <filesystem>
#include <thread>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace ftd::engine::testing {

std::string FreshTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  std::string dir = ::testing::TempDir() + "/ftd_dist_" + std::to_string(::getpid()) + "_" + name + "_" +
                    std::to_string(counter++);
  EXPECT_TRUE(RemoveTree(dir).ok());
  std::filesystem::create_directories(dir);
  return dir;
}

void RunRanks(const RanksOptions& options, const std::function<void(int rank, ProcessGroups& groups)>& body) {
  const std::string store = FreshTempDir("store") + "/store";
  std::vector<std::thread> threads;
  for (int r = 0; r < options.world_size; ++r) {
    threads.emplace_back([&, r] {
      DistEnv env;
      env.rank = r;
      env.world_size = options.world_size;
      env.store_file = store;
      env.timeout = options.timeout;
      auto groups = CreateProcessGroups(env, options.ep_size, options.num_experts, CommBackend::kGloo);
      ASSERT_TRUE(groups.ok()) << "rank " << r << ": " << groups.status();
      // An exception escaping a thread would abort the whole test binary: report it instead.
      try {
        body(r, **groups);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << " threw: " << ExceptionMessage(e);
      }
    });
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace ftd::engine::testing
