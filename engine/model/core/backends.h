// backends.attention and backends.experts of a job: which implementation the engine runs.
//   attention sdpa:  ATen's scaled_dot_product_attention picks its kernel (flash, memory-
//                    efficient, cuDNN or math); packed rows on CUDA: FlashAttention's varlen kernel.
//   attention flash: SDPA restricted to FlashAttention-2 (no mask: unpacked rows, causal);
//                    packed rows: FlashAttention's varlen kernel. CUDA only.
//   attention cudnn: SDPA restricted to cuDNN's fused attention; packed rows through their
//                    document mask (no varlen kernel). CUDA only.
//   experts grouped_mm: at::_grouped_mm (bf16 CUDA, 16-byte rows), else one mm per expert.
//   experts ftd:        ftd's own Hopper grouped GEMM (kernels/grouped_gemm.h: bf16 on sm90),
//                       else as grouped_mm.
//   experts loop:       one mm per expert on every device (a reference; no CUDA graphs: it
//                       reads the counts on the host).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace ftd::engine {

enum class AttentionBackend { kSdpa, kFlash, kCudnn };
enum class ExpertsBackend { kGroupedMm, kLoop, kFtd };

// The spec's names; errors name the field (backends.attention / backends.experts).
absl::StatusOr<AttentionBackend> ParseAttentionBackend(std::string_view name);
absl::StatusOr<ExpertsBackend> ParseExpertsBackend(std::string_view name);
const char* AttentionBackendName(AttentionBackend backend);
const char* ExpertsBackendName(ExpertsBackend backend);

// Process-wide, as ATen's own SDPA switches are: a rank sets them once before its first step.
// Attention: enables only the chosen SDPA kernels in ATen's global context (sdpa: all).
void SetAttentionBackend(AttentionBackend backend);
AttentionBackend CurrentAttentionBackend();
void SetExpertsBackend(ExpertsBackend backend);
ExpertsBackend CurrentExpertsBackend();

// What the choice runs, for the job's log.
std::string DescribeBackends(AttentionBackend attention, ExpertsBackend experts);

}  // namespace ftd::engine
