// The dtype strings of the safetensors format and their ATen scalar types.
#pragma once

#include <cstddef>
#include <string>

#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"

namespace ftd::engine {

// "BF16" -> at::kBFloat16, ...; INVALID_ARGUMENT for a string the format does not define
// (or that ATen cannot hold).
absl::StatusOr<at::ScalarType> SafetensorsDtypeFromString(const std::string& dtype);

// at::kBFloat16 -> "BF16", ...; INVALID_ARGUMENT for a type safetensors cannot store
// (complex, quantized).
absl::StatusOr<std::string> SafetensorsDtypeToString(at::ScalarType dtype);

}  // namespace ftd::engine
