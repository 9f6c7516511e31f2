#include "common/precision_policy.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ftd {

absl::StatusOr<PrecisionPolicy> ParsePrecisionPolicy(const std::string& name, bool fp32_params) {
  if (name.empty() || name == "auto") return fp32_params ? PrecisionPolicy::kFp32Master : PrecisionPolicy::kCompact;
  if (name == "compact") return PrecisionPolicy::kCompact;
  if (name == "compact_sr") return PrecisionPolicy::kCompactSr;
  if (name == "fp32_master") return PrecisionPolicy::kFp32Master;
  if (name == "bf16_pure") return PrecisionPolicy::kBf16Pure;
  return absl::InvalidArgumentError(
      absl::StrCat("precision: \"", name, "\" is not one of auto, compact, compact_sr, fp32_master, bf16_pure"));
}

absl::StatusOr<PrecisionPolicy> ResolveJobPrecision(const std::string& name, bool fp32_params, bool lora) {
  if (lora && (name.empty() || name == "auto")) return PrecisionPolicy::kFp32Master;
  return ParsePrecisionPolicy(name, fp32_params);
}

bool IsPrecisionPolicyName(const std::string& name) { return ParsePrecisionPolicy(name, false).ok(); }

const char* PrecisionPolicyName(PrecisionPolicy policy) {
  switch (policy) {
    case PrecisionPolicy::kCompact:
      return "compact";
    case PrecisionPolicy::kCompactSr:
      return "compact_sr";
    case PrecisionPolicy::kFp32Master:
      return "fp32_master";
    case PrecisionPolicy::kBf16Pure:
      return "bf16_pure";
  }
  return "?";
}

double OptimizerStateBytesPerParameter(PrecisionPolicy policy, int param_bytes) {
  switch (policy) {
    case PrecisionPolicy::kCompact:
      // low half of the master (bf16 parameters only), two 1-byte moment codes, 8 bytes of
      // block scales per 256 elements.
      return (param_bytes == 2 ? 2.0 : 0.0) + 2.0 + 8.0 / 256.0;
    case PrecisionPolicy::kCompactSr:
      // compact without the low half: the bf16 parameter is the weight.
      return 2.0 + 8.0 / 256.0;
    case PrecisionPolicy::kFp32Master:
      return (param_bytes == 4 ? 0.0 : 4.0) + 8.0;
    case PrecisionPolicy::kBf16Pure:
      return 2.0 * param_bytes;
  }
  return 0.0;
}

}  // namespace ftd
