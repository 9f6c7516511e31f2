// How AdamW keeps a parameter's weights and moments (JobSpec.precision). LibTorch-free, so the
// coordinator's plan, ftctl and the engine share the names and the byte counts.
//
//   compact      bf16 parameters: an exact fp32 master stored as the bf16 parameter plus its
//                int16 low half, and 8-bit moments (m/sqrt(v) and sqrt(v), blockwise scaled;
//                kernels/adamw_compact.h). 6 bytes a parameter, as bf16 weights with bf16
//                moments, with the updates of fp32 master weights.
//   compact_sr   bf16 parameters that are their own weights, each update rounded stochastically
//                (exact on average; kernels/stochastic_round.h), and compact's 8-bit moments.
//                2 bytes a parameter, and 10 bytes of optimizer traffic against compact's 14:
//                the faster update, at the numerics of an unbiased bf16 weight (opt-in).
//   fp32_master  fp32 master weights and fp32 moments beside the parameters (14 bytes a bf16
//                parameter): classic mixed precision.
//   bf16_pure    bf16 weights and bf16 moments, no master (6 bytes): the HF/NeMo benchmark
//                setting. Updates below half a bf16 ulp are lost (most of them at lr 1e-5).
//   auto         (or empty) compact for bf16/fp16 parameters, fp32_master for fp32 ones and
//                for LoRA adapters.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace ftd {

enum class PrecisionPolicy {
  kCompact,
  kCompactSr,
  kFp32Master,
  kBf16Pure,
};

// compact and compact_sr: AdamW's moments as 8-bit codes (kernels/adamw_compact.h).
inline bool UsesCompactMoments(PrecisionPolicy policy) {
  return policy == PrecisionPolicy::kCompact || policy == PrecisionPolicy::kCompactSr;
}

// `name` as JobSpec.precision spells it; `fp32_params` says what "auto" resolves to. Errors name
// the field and the accepted values.
absl::StatusOr<PrecisionPolicy> ParsePrecisionPolicy(const std::string& name, bool fp32_params);
// The policy a job runs with (`lora`: method lora, where only the adapters have optimizer state):
// as ParsePrecisionPolicy, except that auto means fp32_master for adapters at any parameter dtype
// (they are small, so classic mixed precision costs little; compact or bf16_pure when asked).
absl::StatusOr<PrecisionPolicy> ResolveJobPrecision(const std::string& name, bool fp32_params, bool lora);
// Whether `name` is accepted (empty and "auto" included).
bool IsPrecisionPolicyName(const std::string& name);
const char* PrecisionPolicyName(PrecisionPolicy policy);

// Bytes of optimizer state per parameter element (masters and moments, not the parameter
// itself) for parameters of `param_bytes` bytes each (2: bf16, 4: fp32).
double OptimizerStateBytesPerParameter(PrecisionPolicy policy, int param_bytes);

}  // namespace ftd
