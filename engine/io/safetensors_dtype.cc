#include "engine/io/safetensors_dtype.h"

#include <array>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ftd::engine {
namespace {

struct DtypeName {
  const char* name;
  at::ScalarType type;
};

// Every dtype of the format that ATen has a type for.
constexpr std::array<DtypeName, 15> kDtypes = {{
    {"BOOL", at::kBool},
    {"U8", at::kByte},
    {"I8", at::kChar},
    {"I16", at::kShort},
    {"U16", at::kUInt16},
    {"I32", at::kInt},
    {"U32", at::kUInt32},
    {"I64", at::kLong},
    {"U64", at::kUInt64},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"F32", at::kFloat},
    {"F64", at::kDouble},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
}};

}  // namespace

absl::StatusOr<at::ScalarType> SafetensorsDtypeFromString(const std::string& dtype) {
  for (const DtypeName& entry : kDtypes) {
    if (dtype == entry.name) return entry.type;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown safetensors dtype \"", dtype, "\""));
}

absl::StatusOr<std::string> SafetensorsDtypeToString(at::ScalarType dtype) {
  for (const DtypeName& entry : kDtypes) {
    if (dtype == entry.type) return std::string(entry.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", c10::toString(dtype), " cannot be stored in safetensors"));
}

}  // namespace ftd::engine
