#include "engine/io/safetensors.h"

#include <dirent.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace ftd::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ElementsAre;
using TensorList = std::vector<std::pair<std::string, at::Tensor>>;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string LengthPrefix(uint64_t length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file with the given header text and data section, unpadded.
std::string MakeFile(const std::string& header, const std::string& data) {
  return LengthPrefix(header.size()) + header + data;
}

// POSIX, not std::filesystem: libtorch.so exports broken copies of some of its functions.
std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* handle = ::opendir(dir.c_str());
  if (handle == nullptr) return names;
  while (const dirent* item = ::readdir(handle)) {
    std::string name = item->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(handle);
  std::sort(names.begin(), names.end());
  return names;
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void Truncate(const std::string& path, uint64_t size) {
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(size)), 0) << path;
}

void RemoveTree(const std::string& dir) {
  ::nftw(dir.c_str(), [](const char* path, const struct stat*, int, struct FTW*) {
    return ::remove(path);
  }, 16, FTW_DEPTH | FTW_PHYS);
}

// Same dtype, shape and bytes (works for dtypes at::equal does not cover, e.g. float8).
void ExpectSameTensor(const at::Tensor& expected, const at::Tensor& actual,
                      const std::string& name) {
  SCOPED_TRACE(name);
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type());
  ASSERT_EQ(actual.sizes(), expected.sizes());
  ASSERT_TRUE(actual.is_contiguous());
  at::Tensor want = expected.contiguous();
  ASSERT_EQ(0, std::memcmp(want.data_ptr(), actual.data_ptr(), want.nbytes()));
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir();
    if (pattern.empty() || pattern.back() != '/') pattern += '/';
    pattern += "safetensors_test_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { RemoveTree(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes a corrupt file and returns the status of opening it.
  absl::Status OpenBytes(const std::string& bytes, const std::string& name = "bad.safetensors") {
    WriteBytes(Path(name), bytes);
    return SafetensorsReader::Open(Path(name)).status();
  }

  std::string dir_;
};

TensorList MixedTensors() {
  at::manual_seed(7);
  return {
      {"bf16.weight", at::randn({3, 5}).to(at::kBFloat16)},
      {"fp16.weight", at::randn({4}).to(at::kHalf)},
      {"fp32.weight", at::randn({2, 3, 4})},
      {"fp64", at::randn({2}, at::kDouble)},
      {"i64", at::arange(6, at::kLong).reshape({2, 3})},
      {"i32", at::randint(-100, 100, {5}, at::kInt)},
      {"i16", at::randint(-100, 100, {5}, at::kShort)},
      {"i8", at::randint(-100, 100, {5}, at::kChar)},
      {"u8", at::randint(0, 255, {5}, at::kByte)},
      {"bool", at::randint(0, 2, {7}, at::kLong).to(at::kBool)},
      {"f8", at::randn({4}).to(at::kFloat8_e4m3fn)},
      {"scalar", at::randn({})},
      {"empty", at::zeros({0, 3})},
  };
}

TEST_F(SafetensorsTest, RoundTripsEveryDtype) {
  TensorList tensors = MixedTensors();
  ASSERT_TRUE(SaveSafetensors(dir_, tensors).ok());
  EXPECT_THAT(ListDir(dir_), ElementsAre("model.safetensors"));

  auto reader = SafetensorsReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<std::string> names;
  for (const auto& [name, tensor] : tensors) names.push_back(name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ((*reader)->Keys(), names);
  EXPECT_EQ((*reader)->Metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  for (const auto& [name, tensor] : tensors) {
    EXPECT_TRUE((*reader)->Has(name));
    auto info = (*reader)->Info(name);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->file, Path("model.safetensors"));
    EXPECT_EQ(info->dtype, tensor.scalar_type()) << name;
    EXPECT_EQ(info->shape, tensor.sizes().vec()) << name;
    EXPECT_EQ(info->end - info->begin, tensor.nbytes()) << name;
    auto loaded = (*reader)->Load(name, tensor.sizes().vec());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ExpectSameTensor(tensor, *loaded, name);
  }
  EXPECT_FALSE((*reader)->Has("nope"));
}

TEST_F(SafetensorsTest, FileLayoutFollowsTheFormat) {
  ASSERT_TRUE(SaveSafetensors(dir_, {{"b", at::ones({3})}, {"a", at::ones({2}, at::kHalf)}}).ok());
  std::string bytes = ReadBytes(Path("model.safetensors"));
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | uint8_t(bytes[i]);
  EXPECT_EQ(header_length % 8, 0u) << "data section must start 8-byte aligned";
  std::string header = bytes.substr(8, header_length);
  // Sorted keys, no whitespace except the trailing padding, tensors back to back by name.
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1),
            R"({"__metadata__":{"format":"pt"},)"
            R"("a":{"data_offsets":[0,4],"dtype":"F16","shape":[2]},)"
            R"("b":{"data_offsets":[4,16],"dtype":"F32","shape":[3]}})");
  EXPECT_EQ(bytes.size(), 8 + header_length + 16);
}

TEST_F(SafetensorsTest, WritesNonContiguousTensorsAsContiguous) {
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  at::Tensor transposed = base.t();
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_TRUE(SaveSafetensors(dir_, {{"t", transposed}, {"slice", base.select(1, 2)}}).ok());
  auto reader = SafetensorsReader::Open(Path("model.safetensors"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  ExpectSameTensor(transposed, *(*reader)->Load("t"), "t");
  ExpectSameTensor(base.select(1, 2), *(*reader)->Load("slice"), "slice");
}

TEST_F(SafetensorsTest, LoadConvertsDtypeOnRequest) {
  at::Tensor bf16 = at::randn({4, 4}).to(at::kBFloat16);
  ASSERT_TRUE(SaveSafetensors(dir_, {{"w", bf16}}).ok());
  auto reader = SafetensorsReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto loaded = (*reader)->Load("w", std::nullopt, at::kFloat);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(*loaded, bf16.to(at::kFloat)));
}

TEST_F(SafetensorsTest, LoadRejectsAnUnexpectedShape) {
  ASSERT_TRUE(SaveSafetensors(dir_, {{"layers.0.w", at::ones({3, 5})}}).ok());
  auto reader = SafetensorsReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto loaded = (*reader)->Load("layers.0.w", std::vector<int64_t>{5, 3});
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()),
              AllOf(HasSubstr("\"layers.0.w\""), HasSubstr(Path("model.safetensors")),
                    HasSubstr("[3, 5]"), HasSubstr("expected [5, 3]")));
}

TEST_F(SafetensorsTest, MissingKeyIsNotFoundNamingKeyAndCheckpoint) {
  ASSERT_TRUE(SaveSafetensors(dir_, {{"a", at::ones({1})}}).ok());
  auto reader = SafetensorsReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  for (const absl::Status& status :
       {(*reader)->Load("model.embed_tokens.weight").status(),
        (*reader)->Info("model.embed_tokens.weight").status()}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(status.message()),
                AllOf(HasSubstr("\"model.embed_tokens.weight\""), HasSubstr(dir_)));
  }
}

TEST_F(SafetensorsTest, ShardsPastTheLimitWithACorrectIndex) {
  TensorList tensors;
  for (int i = 0; i < 5; ++i) {
    tensors.emplace_back(absl::StrCat("layer", i), at::randn({100}));  // 400 bytes each
  }
  tensors.emplace_back("big", at::randn({1000}));  // 4000 bytes: past the limit on its own
  SafetensorsWriteOptions options;
  options.max_shard_bytes = 1000;
  options.metadata = {{"format", "pt"}, {"note", "sharded"}};
  ASSERT_TRUE(SaveSafetensors(dir_, tensors, options).ok());

  // Name order: big | layer0 layer1 | layer2 layer3 | layer4.
  EXPECT_THAT(ListDir(dir_),
              ElementsAre("model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                          "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                          "model.safetensors.index.json"));
  auto index = nlohmann::json::parse(ReadBytes(Path("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"], 4000 + 5 * 400);
  EXPECT_EQ(index["weight_map"],
            (nlohmann::json{{"big", "model-00001-of-00004.safetensors"},
                            {"layer0", "model-00002-of-00004.safetensors"},
                            {"layer1", "model-00002-of-00004.safetensors"},
                            {"layer2", "model-00003-of-00004.safetensors"},
                            {"layer3", "model-00003-of-00004.safetensors"},
                            {"layer4", "model-00004-of-00004.safetensors"}}));

  for (const std::string& path : {dir_, Path("model.safetensors.index.json")}) {
    auto reader = SafetensorsReader::Open(path);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ((*reader)->Keys().size(), tensors.size());
    EXPECT_EQ((*reader)->Metadata().at("note"), "sharded");
    EXPECT_EQ((*reader)->Info("layer3")->file, Path("model-00003-of-00004.safetensors"));
    for (const auto& [name, tensor] : tensors) {
      auto loaded = (*reader)->Load(name);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      ExpectSameTensor(tensor, *loaded, name);
    }
  }
}

TEST_F(SafetensorsTest, SavingTwiceIsByteIdentical) {
  for (uint64_t max_shard_bytes : {uint64_t{5} << 30, uint64_t{200}}) {
    SCOPED_TRACE(max_shard_bytes);
    TensorList tensors = MixedTensors();
    SafetensorsWriteOptions options;
    options.max_shard_bytes = max_shard_bytes;
    std::string first = Path(absl::StrCat("first", max_shard_bytes));
    std::string second = Path(absl::StrCat("second", max_shard_bytes));
    std::string copied = Path(absl::StrCat("copied", max_shard_bytes));
    ASSERT_TRUE(SaveSafetensors(first, tensors, options).ok());
    std::reverse(tensors.begin(), tensors.end());  // input order must not matter
    ASSERT_TRUE(SaveSafetensors(second, tensors, options).ok());
    // Load what was saved and save it again.
    ASSERT_TRUE(CopySafetensors(first, copied, max_shard_bytes).ok());

    std::vector<std::string> names = ListDir(first);
    EXPECT_EQ(names.size() > 1, max_shard_bytes == 200);
    EXPECT_EQ(ListDir(second), names);
    EXPECT_EQ(ListDir(copied), names);
    for (const std::string& name : names) {
      std::string bytes = ReadBytes(first + "/" + name);
      EXPECT_EQ(ReadBytes(second + "/" + name), bytes) << name;
      EXPECT_EQ(ReadBytes(copied + "/" + name), bytes) << name;
    }
  }
}

TEST_F(SafetensorsTest, CopyReshardsAndKeepsMetadata) {
  TensorList tensors = MixedTensors();
  SafetensorsWriteOptions options;
  options.metadata = {{"format", "pt"}, {"origin", "test"}};
  ASSERT_TRUE(SaveSafetensors(Path("single"), tensors, options).ok());
  ASSERT_TRUE(CopySafetensors(Path("single"), Path("sharded"), 64).ok());
  EXPECT_GT(ListDir(Path("sharded")).size(), 3u);
  ASSERT_TRUE(CopySafetensors(Path("sharded"), Path("back"), uint64_t{1} << 30).ok());
  EXPECT_EQ(ReadBytes(Path("back/model.safetensors")), ReadBytes(Path("single/model.safetensors")));
}

TEST_F(SafetensorsTest, ResavingWithOtherShardingRemovesStaleFiles) {
  TensorList tensors = {{"a", at::ones({100})}, {"b", at::ones({100})}};
  WriteBytes(Path("config.json"), "{}");
  SafetensorsWriteOptions sharded;
  sharded.max_shard_bytes = 400;
  ASSERT_TRUE(SaveSafetensors(dir_, tensors, sharded).ok());
  EXPECT_THAT(ListDir(dir_), ElementsAre("config.json", "model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors",
                                         "model.safetensors.index.json"));
  ASSERT_TRUE(SaveSafetensors(dir_, tensors).ok());
  EXPECT_THAT(ListDir(dir_), ElementsAre("config.json", "model.safetensors"));
  ASSERT_TRUE(SaveSafetensors(dir_, tensors, sharded).ok());
  EXPECT_THAT(ListDir(dir_), ElementsAre("config.json", "model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors",
                                         "model.safetensors.index.json"));
}

TEST_F(SafetensorsTest, WriterRejectsWhatItCannotStore) {
  auto expect_invalid = [&](const TensorList& tensors, const std::string& fragment) {
    absl::Status status = SaveSafetensors(Path("out"), tensors);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << fragment;
    EXPECT_THAT(std::string(status.message()), HasSubstr(fragment));
  };
  expect_invalid({{"w", at::ones({1})}, {"w", at::ones({2})}}, "\"w\" is given twice");
  expect_invalid({{"undefined.weight", at::Tensor()}}, "\"undefined.weight\" is undefined");
  expect_invalid({{"__metadata__", at::ones({1})}}, "__metadata__");
  expect_invalid({{"c", at::ones({2}, at::kComplexFloat)}}, "\"c\"");
  expect_invalid({{"sparse", at::ones({2, 2}).to_sparse()}}, "\"sparse\" is not dense");
  SafetensorsWriteOptions zero;
  zero.max_shard_bytes = 0;
  EXPECT_EQ(SaveSafetensors(Path("out"), {{"w", at::ones({1})}}, zero).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, ConcurrentLoadsMapOnce) {
  TensorList tensors;
  for (int i = 0; i < 8; ++i) tensors.emplace_back(absl::StrCat("t", i), at::randn({64, 64}));
  SafetensorsWriteOptions options;
  options.max_shard_bytes = 3 * 64 * 64 * 4;
  ASSERT_TRUE(SaveSafetensors(dir_, tensors, options).ok());
  auto reader = SafetensorsReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (const auto& [name, tensor] : tensors) {
        auto loaded = (*reader)->Load(name);
        if (!loaded.ok() || !at::equal(*loaded, tensor)) ++failures[t];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_THAT(failures, ElementsAre(0, 0, 0, 0));
}

// ---- corrupt inputs: each names the file (and the tensor where one is involved) ----

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& fragments) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& fragment : fragments) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(fragment));
  }
}

TEST_F(SafetensorsTest, FileShorterThanTheLengthPrefix) {
  ExpectError(OpenBytes(std::string("\x10\x00\x00", 3), "short.safetensors"), absl::StatusCode::kDataLoss,
              {Path("short.safetensors"), "3 bytes"});
}

TEST_F(SafetensorsTest, HeaderLengthPastTheEndOfTheFile) {
  ExpectError(OpenBytes(LengthPrefix(100) + "{}"), absl::StatusCode::kDataLoss,
              {Path("bad.safetensors"), "header length 100 runs past the end"});
}

TEST_F(SafetensorsTest, AbsurdHeaderLength) {
  ExpectError(OpenBytes(LengthPrefix(uint64_t{1} << 40) + "{}"),
              absl::StatusCode::kInvalidArgument, {Path("bad.safetensors"), "absurd"});
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  ExpectError(OpenBytes(MakeFile(R"({"w": {"dtype": "F32",)", "")),
              absl::StatusCode::kInvalidArgument, {Path("bad.safetensors"), "not valid JSON"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  ExpectError(OpenBytes(MakeFile("[1, 2]", "")), absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "array, not an object"});
}

TEST_F(SafetensorsTest, EntryMissingOrMistypedFields) {
  const std::string data(8, '\0');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", "missing \"dtype\""},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", "missing \"shape\""},
      {R"({"w": {"dtype": "F32", "shape": [2]}})", "missing \"data_offsets\""},
      {R"({"w": {"dtype": 32, "shape": [2], "data_offsets": [0, 8]}})", "\"dtype\" is not a string"},
      {R"({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", "\"shape\" is not an array"},
      {R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", "non-integer dimension"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", "not a pair"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}})", "not a pair"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", "not a pair"},
      {R"({"w": [0, 8]})", "not an object"},
  };
  for (const auto& [header, fragment] : cases) {
    SCOPED_TRACE(header);
    ExpectError(OpenBytes(MakeFile(header, data)), absl::StatusCode::kInvalidArgument,
                {Path("bad.safetensors"), "tensor \"w\"", fragment});
  }
}

TEST_F(SafetensorsTest, UnknownDtype) {
  ExpectError(OpenBytes(MakeFile(R"({"w": {"dtype": "F17", "shape": [2], "data_offsets": [0, 8]}})",
                                 std::string(8, '\0'))),
              absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "tensor \"w\"", "unknown safetensors dtype \"F17\""});
}

TEST_F(SafetensorsTest, NegativeDimension) {
  ExpectError(OpenBytes(MakeFile(R"({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}})",
                                 std::string(8, '\0'))),
              absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "tensor \"w\"", "negative dimension -1"});
}

TEST_F(SafetensorsTest, OffsetsNotMatchingDtypeSizeTimesNumel) {
  ExpectError(OpenBytes(MakeFile(R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})",
                                 std::string(12, '\0'))),
              absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "tensor \"w\"", "span 8 bytes", "needs 12"});
  ExpectError(OpenBytes(MakeFile(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})",
                                 std::string(8, '\0'))),
              absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "tensor \"w\"", "end before they begin"});
  // A product of dims that overflows 64 bits must not wrap around to a small, valid size.
  ExpectError(OpenBytes(MakeFile(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})",
                                 "")),
              absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "tensor \"w\"", "overflows"});
}

TEST_F(SafetensorsTest, OffsetsOutsideTheDataSection) {
  ExpectError(OpenBytes(MakeFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                 R"( "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
                                 std::string(8, '\0'))),
              absl::StatusCode::kDataLoss,
              {Path("bad.safetensors"), "tensor \"w\"", "past the end of the data section (8 bytes)"});
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  ExpectError(OpenBytes(MakeFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                 R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                 std::string(12, '\0'))),
              absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "tensor \"b\"", "overlaps tensor \"a\""});
}

TEST_F(SafetensorsTest, BadMetadata) {
  ExpectError(OpenBytes(MakeFile(R"({"__metadata__": ["pt"]})", "")),
              absl::StatusCode::kInvalidArgument, {Path("bad.safetensors"), "__metadata__"});
  ExpectError(OpenBytes(MakeFile(R"({"__metadata__": {"format": 1}})", "")),
              absl::StatusCode::kInvalidArgument,
              {Path("bad.safetensors"), "__metadata__", "\"format\" is not a string"});
}

TEST_F(SafetensorsTest, TruncatedDataSection) {
  ASSERT_TRUE(SaveSafetensors(dir_, {{"a", at::ones({4})}, {"z.last", at::ones({4})}}).ok());
  std::string file = Path("model.safetensors");
  Truncate(file, FileSize(file) - 4);
  ExpectError(SafetensorsReader::Open(dir_).status(), absl::StatusCode::kDataLoss,
              {file, "tensor \"z.last\"", "truncated"});
}

TEST_F(SafetensorsTest, FileTruncatedAfterOpenFailsOnLoad) {
  ASSERT_TRUE(SaveSafetensors(dir_, {{"a", at::ones({256})}}).ok());
  auto reader = SafetensorsReader::Open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string file = Path("model.safetensors");
  Truncate(file, FileSize(file) - 100);
  ExpectError((*reader)->Load("a").status(), absl::StatusCode::kDataLoss,
              {file, "tensor \"a\"", "shrank"});
}

TEST_F(SafetensorsTest, MissingPaths) {
  ExpectError(SafetensorsReader::Open(Path("nowhere")).status(), absl::StatusCode::kNotFound,
              {Path("nowhere")});
  ExpectError(SafetensorsReader::Open(dir_).status(), absl::StatusCode::kNotFound,
              {dir_, "model.safetensors", "model.safetensors.index.json"});
}

class SafetensorsIndexTest : public SafetensorsTest {
 protected:
  void SetUp() override {
    SafetensorsTest::SetUp();
    SafetensorsWriteOptions options;
    options.max_shard_bytes = 16;
    ASSERT_TRUE(SaveSafetensors(dir_, {{"a", at::ones({4})}, {"b", at::ones({4})}}, options).ok());
    ASSERT_TRUE(Exists(Path("model-00002-of-00002.safetensors")));
  }
  absl::Status OpenWithIndex(const std::string& index_text) {
    WriteBytes(Path("model.safetensors.index.json"), index_text);
    return SafetensorsReader::Open(dir_).status();
  }
};

TEST_F(SafetensorsIndexTest, MalformedIndex) {
  const std::string index = Path("model.safetensors.index.json");
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": )"), absl::StatusCode::kInvalidArgument,
              {index, "not valid JSON"});
  ExpectError(OpenWithIndex(R"({"metadata": {}})"), absl::StatusCode::kInvalidArgument,
              {index, "no \"weight_map\""});
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": 3}})"), absl::StatusCode::kInvalidArgument,
              {index, "tensor \"a\"", "not a file name"});
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})"),
              absl::StatusCode::kInvalidArgument, {index, "tensor \"a\"", "beside the index"});
}

TEST_F(SafetensorsIndexTest, IndexNamingAMissingShard) {
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",)"
                            R"( "b": "model-00009-of-00009.safetensors"}})"),
              absl::StatusCode::kNotFound,
              {Path("model-00009-of-00009.safetensors"), Path("model.safetensors.index.json"),
               "tensor \"b\""});
}

TEST_F(SafetensorsIndexTest, IndexNamingATensorItsShardLacks) {
  ExpectError(OpenWithIndex(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",)"
                            R"( "b": "model-00001-of-00002.safetensors"}})"),
              absl::StatusCode::kInvalidArgument,
              {Path("model-00001-of-00002.safetensors"), Path("model.safetensors.index.json"),
               "tensor \"b\"", "does not contain it"});
}

TEST_F(SafetensorsIndexTest, CorruptShardIsNamed) {
  std::string shard = Path("model-00002-of-00002.safetensors");
  Truncate(shard, 5);
  ExpectError(SafetensorsReader::Open(dir_).status(), absl::StatusCode::kDataLoss,
              {shard, Path("model.safetensors.index.json"), "tensor \"b\""});
}

}  // namespace
}  // namespace ftd::engine
