#include "common/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace ftd {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/ftd_file_util_XXXXXX";
  const char* dir = ::mkdtemp(tmpl);
  EXPECT_NE(dir, nullptr);
  return dir;
}

TEST(FileUtil, AtomicWriteThenRead) {
  std::string dir = TempDir();
  std::string path = dir + "/a.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "hello").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "replaced").ok());
  auto got = ReadFileToString(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "replaced");
  // No temporary file is left behind.
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  struct stat st;
  EXPECT_NE(::stat(tmp.c_str(), &st), 0);
}

TEST(FileUtil, MissingFileIsNotFoundAndNamesPath) {
  auto got = ReadFileToString("/nonexistent/ftd/file.json");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find("/nonexistent/ftd/file.json"), std::string::npos);
}

TEST(FileUtil, WriteIntoMissingDirectoryFails) {
  auto st = WriteFileAtomically("/nonexistent/ftd/out.json", "x");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/nonexistent/ftd/out.json"), std::string::npos);
}

}  // namespace
}  // namespace ftd

namespace ftd {
namespace {

TEST(FileUtil, RemoveTreeRemovesNestedDirectoriesAndIgnoresMissing) {
  char tmpl[] = "/tmp/ftd_rmtree_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  ASSERT_EQ(::mkdir((dir + "/a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((dir + "/a/b").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFileAtomically(dir + "/a/b/f.txt", "x").ok());
  ASSERT_TRUE(WriteFileAtomically(dir + "/g.txt", "y").ok());
  EXPECT_TRUE(RemoveTree(dir).ok());
  struct stat st;
  EXPECT_NE(::stat(dir.c_str(), &st), 0);
  EXPECT_TRUE(RemoveTree(dir).ok());  // already gone
}

}  // namespace
}  // namespace ftd
