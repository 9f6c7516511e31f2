#include "engine/dist/mesh.h"

#include <map>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/dist/dist_env.h"

namespace ftd::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParallelMeshTest, EpGroupsAreConsecutiveAndReplicasStrided) {
  auto mesh = ParallelMesh::Create(/*world_size=*/8, /*rank=*/5, /*ep_size=*/4, /*num_experts=*/16);
  ASSERT_TRUE(mesh.ok()) << mesh.status();
  EXPECT_EQ(mesh->ep_rank(), 1);
  EXPECT_EQ(mesh->ep_group(), 1);
  EXPECT_EQ(mesh->num_replicas(), 2);
  EXPECT_EQ(mesh->experts_per_rank(), 4);
  EXPECT_EQ(mesh->expert_begin(), 4);
  EXPECT_THAT(mesh->EpGroupRanks(), ElementsAre(4, 5, 6, 7));
  EXPECT_THAT(mesh->ReplicaRanks(), ElementsAre(1, 5));
  EXPECT_EQ(mesh->ExpertOwner(0), 0);
  EXPECT_EQ(mesh->ExpertOwner(7), 1);
  EXPECT_EQ(mesh->ExpertOwner(15), 3);
}

TEST(ParallelMeshTest, EveryExpertHasExactlyOneOwnerPerEpGroup) {
  for (int ep : {1, 2, 4}) {
    std::map<std::pair<int, int64_t>, int> owners;  // (ep group, expert) -> count
    for (int r = 0; r < 4; ++r) {
      auto mesh = ParallelMesh::Create(4, r, ep, 8);
      ASSERT_TRUE(mesh.ok());
      for (int64_t e = mesh->expert_begin(); e < mesh->expert_begin() + mesh->experts_per_rank(); ++e) {
        ++owners[{mesh->ep_group(), e}];
        EXPECT_EQ(mesh->ExpertOwner(e), mesh->ep_rank());
      }
    }
    EXPECT_EQ(owners.size(), static_cast<size_t>(8 * (4 / ep))) << "ep " << ep;
    for (const auto& [key, count] : owners) EXPECT_EQ(count, 1);
  }
}

TEST(ParallelMeshTest, RejectsEpThatDoesNotDivide) {
  auto not_world = ParallelMesh::Create(4, 0, 3, 12);
  EXPECT_THAT(std::string(not_world.status().message()), HasSubstr("parallelism.ep_size (3) must divide the world size (4)"));
  auto not_experts = ParallelMesh::Create(4, 0, 4, 6);
  EXPECT_THAT(std::string(not_experts.status().message()),
              HasSubstr("parallelism.ep_size (4) must divide the number of experts (6)"));
  EXPECT_FALSE(ParallelMesh::Create(4, 4, 1, 8).ok());
}

absl::StatusOr<DistEnv> Parse(std::map<std::string, std::string> vars) {
  return ParseDistEnv([&vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(DistEnvTest, UnsetMeansOneProcess) {
  auto env = Parse({});
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->world_size, 1);
  EXPECT_EQ(env->rank, 0);
  EXPECT_EQ(env->timeout.count(), 0);
}

TEST(DistEnvTest, ReadsTorchrunVariables) {
  auto env = Parse({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.2"},
                    {"MASTER_PORT", "29500"}, {"FTD_DIST_TIMEOUT_SECONDS", "30"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->master_addr, "10.0.0.2");
  EXPECT_EQ(env->master_port, 29500);
  EXPECT_EQ(env->timeout, std::chrono::seconds(30));
}

TEST(DistEnvTest, BadValuesNameTheVariable) {
  EXPECT_THAT(std::string(Parse({{"RANK", "x"}}).status().message()), HasSubstr("RANK=\"x\""));
  EXPECT_THAT(std::string(Parse({{"RANK", "4"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}})
                              .status()
                              .message()),
              HasSubstr("RANK=4 is not below WORLD_SIZE=4"));
  EXPECT_THAT(std::string(Parse({{"WORLD_SIZE", "2"}}).status().message()), HasSubstr("needs MASTER_ADDR"));
  EXPECT_THAT(std::string(Parse({{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}).status().message()),
              HasSubstr("needs MASTER_PORT"));
  EXPECT_THAT(std::string(Parse({{"MASTER_PORT", "70000"}}).status().message()), HasSubstr("not a TCP port"));
}

TEST(DistEnvTest, OnlyRankZeroTakesTheLaunchersStoreSocket) {
  const std::map<std::string, std::string> two_ranks = {{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
                                                        {"MASTER_PORT", "40001"}, {"FTD_MASTER_LISTEN_FD", "5"}};
  auto rank0 = two_ranks;
  rank0["RANK"] = "0";
  auto env = Parse(rank0);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->master_listen_fd, 5);
  EXPECT_EQ(Parse({{"MASTER_PORT", "40001"}})->master_listen_fd, -1);

  auto rank1 = two_ranks;
  rank1["RANK"] = "1";
  EXPECT_THAT(std::string(Parse(rank1).status().message()), HasSubstr("FTD_MASTER_LISTEN_FD is for rank 0"));
  rank0["FTD_MASTER_LISTEN_FD"] = "-1";
  EXPECT_THAT(std::string(Parse(rank0).status().message()), HasSubstr("FTD_MASTER_LISTEN_FD=\"-1\""));
}

}  // namespace
}  // namespace ftd::engine
