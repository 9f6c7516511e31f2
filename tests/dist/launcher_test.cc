// The local launcher's rendezvous port: held (listening) from the moment it is chosen until rank
// 0's store takes the socket over, so no other process can take it in between (two launches side
// by side once lost a port to one another that way: EADDRINUSE in rank 0).
#include "engine/dist/launcher.h"

#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace ftd::engine {
namespace {

using ::testing::HasSubstr;

// Each rank connects to MASTER_PORT before anything of its own listens there (the connection is
// queued on the launcher's socket), checks that only rank 0 got the socket, and prints its port.
// Rank 0, which holds the socket, stays until the others have connected (a file each in $1).
constexpr char kRankScript[] = R"sh(set -e
exec {conn}<>/dev/tcp/127.0.0.1/$MASTER_PORT  # a free fd number, not the store socket
if [ "$RANK" = 0 ]; then
  [[ "$(readlink /proc/$$/fd/$FTD_MASTER_LISTEN_FD)" == socket:* ]]
  for i in $(seq 600); do [ "$(ls "$1" | wc -l)" -ge $((WORLD_SIZE - 1)) ] && break; sleep 0.1; done
  [ "$(ls "$1" | wc -l)" -ge $((WORLD_SIZE - 1)) ]
else
  [ -z "${FTD_MASTER_LISTEN_FD+set}" ]
  touch "$1/$RANK"
fi
echo "connected port $MASTER_PORT"
)sh";

LaunchOptions BashRanks(int nproc, const std::string& dir) {
  LaunchOptions o;
  o.nproc = nproc;
  o.program = "/bin/bash";
  o.args = {"-c", kRankScript, "rank-script", dir};
  return o;
}

// A fresh directory for one launch's marker files.
std::string MarkerDir() {
  std::string dir = (std::filesystem::temp_directory_path() / "ftd_launcher_test_XXXXXX").string();
  EXPECT_NE(mkdtemp(dir.data()), nullptr);
  return dir;
}

// The port every rank printed; -1 when a rank did not print one or they differ.
int PortAllRanksSaw(const std::string& out, int nproc) {
  std::set<int> ports;
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    const size_t at = line.find("connected port ");
    if (at == absl::string_view::npos) continue;
    int port = 0;
    if (!absl::SimpleAtoi(line.substr(at + 15), &port)) return -1;
    ports.insert(port);
    ++lines;
  }
  return lines == nproc && ports.size() == 1 ? *ports.begin() : -1;
}

TEST(LauncherTest, RanksFindTheStorePortListeningAndOnlyRankZeroHoldsIt) {
  std::ostringstream out;
  absl::Status s = LaunchLocalRanks(BashRanks(3, MarkerDir()), out);
  ASSERT_TRUE(s.ok()) << s << "\n" << out.str();
  EXPECT_GT(PortAllRanksSaw(out.str(), 3), 0) << out.str();
}

TEST(LauncherTest, LaunchesSideBySideHoldDistinctPorts) {
  constexpr int kLaunches = 6;
  std::vector<std::ostringstream> outs(kLaunches);
  std::vector<absl::Status> results(kLaunches);
  std::vector<std::string> dirs;
  for (int i = 0; i < kLaunches; ++i) dirs.push_back(MarkerDir());
  std::vector<std::thread> threads;
  for (int i = 0; i < kLaunches; ++i) {
    threads.emplace_back([&, i] { results[i] = LaunchLocalRanks(BashRanks(2, dirs[i]), outs[i]); });
  }
  for (std::thread& t : threads) t.join();
  std::set<int> ports;
  for (int i = 0; i < kLaunches; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i] << "\n" << outs[i].str();
    const int port = PortAllRanksSaw(outs[i].str(), 2);
    ASSERT_GT(port, 0) << outs[i].str();
    ports.insert(port);
  }
  // Not a property of the kernel's choice alone: each port stays bound until its launch ends.
  EXPECT_EQ(ports.size(), static_cast<size_t>(kLaunches));
}

TEST(LauncherTest, AGivenPortIsPassedThroughWithoutASocket) {
  LaunchOptions o = BashRanks(1, MarkerDir());
  o.master_port = 1;  // nothing listens there: the rank cannot connect, and says so by failing
  std::ostringstream out;
  absl::Status s = LaunchLocalRanks(o, out);
  EXPECT_FALSE(s.ok()) << out.str();
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank 0 exited with status"));
}

}  // namespace
}  // namespace ftd::engine
