// The Communicator over real Gloo groups (ranks as threads): results of every collective,
// zero-row all-to-alls, and failures that surface as errors instead of hangs.
#include <chrono>
#include <mutex>
#include <thread>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/dist/communicator.h"
#include "tests/dist/ranks_util.h"

namespace ftd::engine {
namespace {

using testing::RanksOptions;
using testing::RunRanks;
using ::testing::HasSubstr;

TEST(CollectivesTest, AllReduceReduceScatterAllGather) {
  RunRanks({.world_size = 3}, [](int r, ProcessGroups& g) {
    Communicator& w = *g.world;
    EXPECT_EQ(w.rank(), r);
    EXPECT_EQ(w.size(), 3);
    at::Tensor a = at::full({4}, static_cast<double>(r + 1));
    ASSERT_TRUE(w.AllReduce({a}).ok());
    EXPECT_TRUE(a.equal(at::full({4}, 6.0)));
    at::Tensor m = at::full({1}, static_cast<double>(r));
    ASSERT_TRUE(w.AllReduce({m}, ReduceKind::kMax).ok());
    EXPECT_EQ(m.item<float>(), 2.0f);
    // in = [0..5] + 10*rank on every rank; rank r's slice of the sum is 2 elements.
    at::Tensor in = at::arange(6, at::kFloat) + 10.0 * r;
    at::Tensor out = at::empty({2});
    ASSERT_TRUE(w.ReduceScatter(out, in).ok());
    at::Tensor expected = (at::arange(6, at::kFloat) * 3 + 30).narrow(0, 2 * r, 2);
    EXPECT_TRUE(out.equal(expected)) << out;
    at::Tensor gathered = at::empty({6});
    ASSERT_TRUE(w.AllGather(gathered, at::full({2}, static_cast<double>(r))).ok());
    EXPECT_TRUE(gathered.equal(at::tensor({0.f, 0.f, 1.f, 1.f, 2.f, 2.f})));
    EXPECT_TRUE(w.Barrier().ok());
    EXPECT_FALSE(w.ReduceScatter(at::empty({2}), at::empty({5})).ok());
  });
}

TEST(CollectivesTest, AllToAllWithEmptyBlocksAndNothingAtAll) {
  RunRanks({.world_size = 3}, [](int r, ProcessGroups& g) {
    Communicator& w = *g.world;
    // Rank r sends (r + d) % 3 rows to rank d, each row [src, dst, i].
    std::vector<int64_t> send(3), recv(3);
    std::vector<at::Tensor> rows;
    for (int d = 0; d < 3; ++d) {
      send[d] = (r + d) % 3;
      recv[d] = (d + r) % 3;
      for (int64_t i = 0; i < send[d]; ++i) rows.push_back(at::tensor({float(r), float(d), float(i)}));
    }
    at::Tensor in = rows.empty() ? at::empty({0, 3}) : at::stack(rows);
    at::Tensor out = at::empty({recv[0] + recv[1] + recv[2], 3});
    ASSERT_TRUE(w.AllToAll(out, in, recv, send).ok());
    int64_t row = 0;
    for (int s = 0; s < 3; ++s) {
      for (int64_t i = 0; i < recv[s]; ++i, ++row) {
        EXPECT_TRUE(out[row].equal(at::tensor({float(s), float(r), float(i)}))) << out[row];
      }
    }
    // Nobody sends anything.
    std::vector<int64_t> zeros(3, 0);
    at::Tensor none_out = at::empty({0, 3});
    EXPECT_TRUE(w.AllToAll(none_out, at::empty({0, 3}), zeros, zeros).ok());
  });
}

TEST(CollectivesTest, SubgroupsFollowTheMesh) {
  RunRanks({.world_size = 4, .ep_size = 2, .num_experts = 4}, [](int r, ProcessGroups& g) {
    EXPECT_EQ(g.ep->size(), 2);
    EXPECT_EQ(g.ep->rank(), r % 2);
    EXPECT_EQ(g.replicas->size(), 2);
    EXPECT_EQ(g.replicas->rank(), r / 2);
    at::Tensor a = at::full({1}, static_cast<double>(r));
    ASSERT_TRUE(g.ep->AllReduce({a}).ok());
    EXPECT_EQ(a.item<float>(), r < 2 ? 1.0f : 5.0f);  // {0,1} and {2,3}
    at::Tensor b = at::full({1}, static_cast<double>(r));
    ASSERT_TRUE(g.replicas->AllReduce({b}).ok());
    EXPECT_EQ(b.item<float>(), r % 2 == 0 ? 2.0f : 4.0f);  // {0,2} and {1,3}
  });
}

TEST(CollectivesTest, SilentPeerIsATimeoutErrorNotAHang) {
  std::mutex mu;
  std::string error;
  double seconds = 0;
  RunRanks({.world_size = 2, .timeout = std::chrono::milliseconds(1500)}, [&](int r, ProcessGroups& g) {
    if (r == 1) {
      // Alive, but never joins the collective; keeps its groups until rank 0 has given up.
      std::this_thread::sleep_for(std::chrono::milliseconds(4000));
      return;
    }
    auto t0 = std::chrono::steady_clock::now();
    at::Tensor a = at::ones({8});
    absl::Status s = g.world->AllReduce({a});
    std::lock_guard<std::mutex> lock(mu);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    error = s.ToString();
  });
  EXPECT_THAT(error, HasSubstr("collective all_reduce on the world group (rank 0 of 2) failed"));
  EXPECT_LT(seconds, 3.9);  // the 1.5 s timeout, not rank 1 leaving at 4 s
}

TEST(CollectivesTest, DeadPeerIsAnErrorQuickly) {
  std::mutex mu;
  std::string error;
  RunRanks({.world_size = 2, .timeout = std::chrono::milliseconds(20000)}, [&](int r, ProcessGroups& g) {
    if (r == 1) {
      // Dies: its groups (and connections) go away without joining.
      g.world.reset();
      g.ep.reset();
      g.replicas.reset();
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto t0 = std::chrono::steady_clock::now();
    at::Tensor a = at::ones({8});
    std::vector<int64_t> one = {4, 4};
    absl::Status s = g.world->AllToAll(at::empty({8}), a, one, one);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::lock_guard<std::mutex> lock(mu);
    error = s.ToString();
    EXPECT_LT(seconds, 19.0) << error;
  });
  EXPECT_THAT(error, HasSubstr("collective all_to_all on the world group"));
}

}  // namespace
}  // namespace ftd::engine
