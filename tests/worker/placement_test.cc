#include "server/scheduler_placement.h"

#include <gtest/gtest.h>

namespace ftd::server {
namespace {

TEST(PlaceGangTest, TwoNodesOfTwoOnTwoWorkers) {
  auto p = PlaceGang({{"a", 2}, {"b", 2}}, 2, 2);
  ASSERT_TRUE(p.has_value());
  ASSERT_EQ(p->world_size, 4);
  EXPECT_EQ(p->ranks[0].worker, "a");
  EXPECT_EQ(p->ranks[1].worker, "a");
  EXPECT_EQ(p->ranks[1].local_rank, 1);
  EXPECT_EQ(p->ranks[2].worker, "b");
  EXPECT_EQ(p->ranks[2].local_rank, 0);
  EXPECT_EQ(p->ranks[3].rank, 3);
}

TEST(PlaceGangTest, PacksOntoFewestWorkers) {
  // 4 ranks fit on the 4-slot worker: the two 2-slot workers stay free.
  auto p = PlaceGang({{"small1", 2}, {"big", 4}, {"small2", 2}}, 2, 2);
  ASSERT_TRUE(p.has_value());
  ASSERT_EQ(p->per_worker.size(), 1u);
  EXPECT_EQ(p->per_worker[0].first, "big");
  EXPECT_EQ(p->per_worker[0].second, 4);
}

TEST(PlaceGangTest, AllOrNothing) {
  EXPECT_FALSE(PlaceGang({{"a", 2}, {"b", 1}}, 2, 2).has_value());  // 3 free, a group of 2 left over
  EXPECT_FALSE(PlaceGang({{"a", 1}}, 3, 1).has_value());
  EXPECT_FALSE(PlaceGang({}, 1, 1).has_value());
  EXPECT_FALSE(PlaceGang({{"a", 4}}, 0, 1).has_value());
}

TEST(PlaceGangTest, GroupsNeverSpanWorkers) {
  // 3 + 3 free slots, one group of 4: no single worker has room.
  EXPECT_FALSE(PlaceGang({{"a", 3}, {"b", 3}}, 1, 4).has_value());
  // Three single-rank groups over 2 + 2 slots: 2 on one, 1 on the other.
  auto p = PlaceGang({{"a", 2}, {"b", 2}}, 3, 1);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->per_worker.size(), 2u);
  EXPECT_EQ(p->per_worker[0].second, 2);
  EXPECT_EQ(p->per_worker[1].second, 1);
}

TEST(PlaceGangTest, DeterministicTieBreak) {
  auto p = PlaceGang({{"w2", 2}, {"w1", 2}}, 1, 2);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->ranks[0].worker, "w1");
}

TEST(PlaceGangTest, CapacityCheck) {
  EXPECT_TRUE(GangFitsCapacity({{"a", 2}, {"b", 2}}, 3, 1));
  EXPECT_FALSE(GangFitsCapacity({{"a", 2}, {"b", 2}}, 1, 3));
}

}  // namespace
}  // namespace ftd::server
