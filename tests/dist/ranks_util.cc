#include "tests/dist/ranks_util.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace ftd::engine::testing {
namespace {

// Threads meet here: Arrive() blocks until all `count` have arrived.
class Meeting {
 public:
  explicit Meeting(int count) : left_(count) {}
  void Arrive() {
    std::unique_lock<std::mutex> lock(mu_);
    if (--left_ == 0) {
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return left_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};

}  // namespace

std::string FreshTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  std::string dir = ::testing::TempDir() + "/ftd_dist_" + std::to_string(::getpid()) + "_" + name + "_" +
                    std::to_string(counter++);
  EXPECT_TRUE(RemoveTree(dir).ok());
  std::filesystem::create_directories(dir);
  return dir;
}

void RunRanks(const RanksOptions& options, const std::function<void(int rank, ProcessGroups& groups)>& body) {
  const int world = options.world_size;
  const std::string dir = FreshTempDir("store");
  std::vector<std::unique_ptr<ProcessGroups>> groups(world);
  std::vector<std::string> errors(world);  // per rank: group creation or an escaped exception
  std::atomic<int> created{0};
  Meeting after_create(world), after_body(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      DistEnv env;
      env.rank = r;
      env.world_size = world;
      env.store_file = dir + "/store";
      env.timeout = options.timeout;
      env.rendezvous_timeout = std::max(options.rendezvous_timeout, options.timeout);
      auto g = CreateProcessGroups(env, options.ep_size, options.num_experts, CommBackend::kGloo);
      if (g.ok()) {
        groups[r] = *std::move(g);
        created.fetch_add(1);
      } else {
        errors[r] = g.status().ToString();
      }
      // Bodies run only when every rank has its groups: otherwise the others would wait in
      // their first collective for a rank that is not there.
      after_create.Arrive();
      if (created.load() == world) {
        try {
          body(r, *groups[r]);
        } catch (const std::exception& e) {
          // An exception escaping a thread would abort the whole test binary: report it instead.
          errors[r] = "threw: " + ExceptionMessage(e);
        }
      }
      after_body.Arrive();
      groups[r].reset();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    if (!errors[r].empty()) ADD_FAILURE() << "rank " << r << " of " << world << ": " << errors[r];
  }
  // RemoveTree, not std::filesystem::remove_all: libtorch.so's exported copy crashes here.
  if (absl::Status st = RemoveTree(dir); !st.ok()) ADD_FAILURE() << st;
}

}  // namespace ftd::engine::testing
