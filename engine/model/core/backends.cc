#include "engine/model/core/backends.h"

#include <atomic>

#include <ATen/Context.h>

#include "absl/strings/str_cat.h"

namespace ftd::engine {
namespace {

std::atomic<AttentionBackend> g_attention{AttentionBackend::kSdpa};
std::atomic<ExpertsBackend> g_experts{ExpertsBackend::kGroupedMm};

}  // namespace

absl::StatusOr<AttentionBackend> ParseAttentionBackend(std::string_view name) {
  if (name.empty() || name == "sdpa") return AttentionBackend::kSdpa;
  if (name == "flash") return AttentionBackend::kFlash;
  if (name == "cudnn") return AttentionBackend::kCudnn;
  return absl::InvalidArgumentError(absl::StrCat("backends.attention \"", std::string(name), "\" is not one of sdpa, flash, cudnn"));
}

absl::StatusOr<ExpertsBackend> ParseExpertsBackend(std::string_view name) {
  if (name.empty() || name == "grouped_mm") return ExpertsBackend::kGroupedMm;
  if (name == "loop") return ExpertsBackend::kLoop;
  if (name == "ftd") return ExpertsBackend::kFtd;
  return absl::InvalidArgumentError(
      absl::StrCat("backends.experts \"", std::string(name), "\" is not one of grouped_mm, ftd, loop"));
}

const char* AttentionBackendName(AttentionBackend backend) {
  switch (backend) {
    case AttentionBackend::kSdpa: return "sdpa";
    case AttentionBackend::kFlash: return "flash";
    case AttentionBackend::kCudnn: return "cudnn";
  }
  return "?";
}

const char* ExpertsBackendName(ExpertsBackend backend) {
  switch (backend) {
    case ExpertsBackend::kGroupedMm: return "grouped_mm";
    case ExpertsBackend::kLoop: return "loop";
    case ExpertsBackend::kFtd: return "ftd";
  }
  return "?";
}

void SetAttentionBackend(AttentionBackend backend) {
  g_attention = backend;
  at::Context& ctx = at::globalContext();
  const bool all = backend == AttentionBackend::kSdpa;
  ctx.setSDPUseFlash(all || backend == AttentionBackend::kFlash);
  ctx.setSDPUseCuDNN(all || backend == AttentionBackend::kCudnn);
  ctx.setSDPUseMemEfficient(all);
  ctx.setSDPUseMath(all);
}

AttentionBackend CurrentAttentionBackend() { return g_attention; }
void SetExpertsBackend(ExpertsBackend backend) { g_experts = backend; }
ExpertsBackend CurrentExpertsBackend() { return g_experts; }

std::string DescribeBackends(AttentionBackend attention, ExpertsBackend experts) {
  const char* attention_runs =
      attention == AttentionBackend::kFlash
          ? "SDPA restricted to FlashAttention-2, packed rows through FlashAttention's varlen kernel"
      : attention == AttentionBackend::kCudnn
          ? "SDPA restricted to cuDNN attention, packed rows through their document mask"
          : "SDPA choosing its kernel, packed rows on CUDA through FlashAttention's varlen kernel";
  const char* experts_run =
      experts == ExpertsBackend::kLoop ? "one matmul per expert, no CUDA graphs"
      : experts == ExpertsBackend::kFtd
          ? "ftd's Hopper grouped GEMM on sm90 (bf16), at::_grouped_mm on other GPUs, one matmul per expert on CPU"
          : "at::_grouped_mm on CUDA (bf16), one matmul per expert elsewhere";
  return absl::StrCat("attention ", AttentionBackendName(attention), " (", attention_runs, "), experts ",
                      ExpertsBackendName(experts), " (", experts_run, ")");
}

}  // namespace ftd::engine
