// Tensor-facing launchers of the Hopper grouped GEMM (kernels/grouped_gemm.h): shape checks,
// the output and the workspace from the caching allocator (so the launch is graph-capturable),
// then kernels/grouped_gemm_launch.h on the current stream.
#include <algorithm>

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/grouped_gemm.h"
#include "kernels/cuda_utils.cuh"
#include "kernels/grouped_gemm_adamw.h"

namespace ftd::kernels {

namespace {

// ATen's SM carve-out (at::Context::_setSMCarveout_EXPERIMENTAL, which at::_grouped_mm and
// cuBLASLt honour too): the persistent CTAs leave that many SMs to other streams' work.
GroupedGemmArgs WithCarveout(GroupedGemmArgs args) {
  const std::optional<int32_t> carveout = at::globalContext()._SMCarveout_EXPERIMENTAL();
  if (carveout.has_value() && *carveout > 0) args.sm_count = std::max(1, cuda::NumSms() - *carveout);
  return args;
}

// The workspace is freed on return: the caching allocator hands it out again only to work queued
// after this launch on the same stream.
void RunGroupedGemm(const GroupedGemmArgs& requested, GroupedGemmTile tile, const at::Tensor& like) {
  const GroupedGemmArgs args = WithCarveout(requested);
  const size_t bytes = GroupedGemmWorkspaceBytes(args, tile);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  const std::string error =
      LaunchGroupedGemmSm90(args, tile, workspace.data_ptr(), bytes, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(error.empty(), error, " (tile ", GroupedGemmTileName(tile), ")");
}

void CheckOffs(const at::Tensor& offs, int64_t groups, const at::Tensor& like, const char* op) {
  TORCH_CHECK(offs.scalar_type() == at::kInt && offs.dim() == 1 && offs.numel() == groups &&
                  offs.device() == like.device() && offs.is_contiguous(),
              op, ": offs must be a contiguous int32 [", groups, "] on ", like.device(), ", got ", offs.scalar_type(),
              " ", offs.sizes(), " on ", offs.device());
}

// The weight-gradient operands a [N, K], b [N, M] over offs' groups, into d (or nothing).
GroupedGemmArgs WeightGradArgs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs, void* d) {
  GroupedGemmArgs args;
  args.operands = GroupedOperands::kWeightGrad;
  args.a = a.data_ptr();
  args.b = b.data_ptr();
  args.d = d;
  args.offs = offs.data_ptr<int32_t>();
  args.groups = static_cast<int>(offs.numel());
  args.k = a.size(1);
  args.m = b.size(1);
  return args;
}

// The weight-gradient GEMM with the compact update (or squares-only) epilogue, on the current
// stream; the workspace as RunGroupedGemm's.
void RunWeightGradCompactAdamW(const GroupedGemmArgs& requested, const CompactUpdateState& state,
                               const at::Tensor& like) {
  const GroupedGemmArgs args = WithCarveout(requested);
  const size_t bytes = WeightGradCompactAdamWWorkspaceBytes(args);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  const std::string error =
      LaunchWeightGradCompactAdamWSm90(args, state, workspace.data_ptr(), bytes, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(error.empty(), error);
}

}  // namespace

at::Tensor GroupedMmCuda(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs, GroupedGemmTile tile) {
  TORCH_CHECK(GroupedMmCudaSupports(rows, w), "GroupedMmCuda: needs bf16 sm90 CUDA rows [N, K] (contiguous) and w ",
              "[E, K, M] (contiguous or a transposed [E, M, K]) with K, M multiples of 8, got ", rows.sizes(), ", ",
              w.sizes());
  TORCH_CHECK(rows.size(1) == w.size(1), "GroupedMmCuda: rows have ", rows.size(1), " columns, w[g] ", w.size(1),
              " rows");
  CheckOffs(offs, w.size(0), rows, "GroupedMmCuda");
  c10::cuda::CUDAGuard guard(rows.device());
  at::Tensor out = at::empty({rows.size(0), w.size(2)}, rows.options());
  GroupedGemmArgs args;
  args.operands = w.is_contiguous() ? GroupedOperands::kRowsTimesWeight : GroupedOperands::kRowsTimesWeightT;
  args.a = rows.data_ptr();
  args.b = w.data_ptr();  // [E, M, K] storage when transposed
  args.d = out.data_ptr();
  args.offs = offs.data_ptr<int32_t>();
  args.groups = static_cast<int>(w.size(0));
  args.k = rows.size(1);
  args.m = w.size(2);
  RunGroupedGemm(args, tile, rows);
  return out;
}

at::Tensor GroupedMmWeightGradCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                   GroupedGemmTile tile) {
  return GroupedMmWeightGradGroupsCuda(a, b, offs, 0, offs.numel(), tile);
}

at::Tensor GroupedMmWeightGradGroupsCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                         int64_t first, int64_t count, GroupedGemmTile tile) {
  TORCH_CHECK(GroupedMmWeightGradCudaSupports(a, b), "GroupedMmWeightGradCuda: needs contiguous bf16 sm90 CUDA a ",
              "[N, K] and b [N, M], K and M multiples of 8, got ", a.sizes(), ", ", b.sizes());
  TORCH_CHECK(a.size(0) == b.size(0), "GroupedMmWeightGradCuda: a has ", a.size(0), " rows, b ", b.size(0));
  CheckOffs(offs, offs.numel(), a, "GroupedMmWeightGradCuda");
  TORCH_CHECK(first >= 0 && count >= 0 && first + count <= offs.numel(), "GroupedMmWeightGradCuda: groups [", first,
              ", ", first + count, ") outside the ", offs.numel(), " of offs");
  c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({count, a.size(1), b.size(1)}, a.options());
  if (count == 0) return out;
  GroupedGemmArgs args = WeightGradArgs(a, b, offs, out.data_ptr());
  args.first_group = static_cast<int>(first);
  args.groups = static_cast<int>(count);
  RunGroupedGemm(args, tile, a);
  return out;
}

void GroupedMmWeightGradCompactAdamWCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                         const at::Tensor& param, const at::Tensor& master_low,
                                         const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h) {
  TORCH_CHECK(GroupedMmWeightGradCompactAdamWCudaSupports(a, b, offs, param, master_low, moments, step, h),
              "GroupedMmWeightGradCompactAdamWCuda: needs contiguous bf16 sm90 CUDA a [N, K], b [N, M] and a bf16 ",
              "parameter [E, K, M] with its compact state, M a multiple of 256; got ", a.sizes(), ", ", b.sizes(),
              ", ", param.sizes());
  TORCH_CHECK(a.size(0) == b.size(0), "GroupedMmWeightGradCompactAdamWCuda: a has ", a.size(0), " rows, b ",
              b.size(0));
  CheckOffs(offs, param.size(0), a, "GroupedMmWeightGradCompactAdamWCuda");
  c10::cuda::CUDAGuard guard(a.device());
  CompactUpdateState state;
  state.param = param.data_ptr();
  state.master_low = master_low.data_ptr<int16_t>();
  state.r_codes = moments.r_codes.data_ptr<int8_t>();
  state.s_codes = moments.s_codes.data_ptr<uint8_t>();
  state.r_scale = moments.r_scale.data_ptr<float>();
  state.s_max = moments.s_max.data_ptr<float>();
  state.step = step.data_ptr<float>();
  state.hyper = MakeCompactUpdateHyper(h);
  state.skip_idle = h.weight_decay == 0.0;  // as CompactAdamWStepCuda
  RunWeightGradCompactAdamW(WeightGradArgs(a, b, offs, nullptr), state, a);  // offs: param.size(0) groups
}

void GroupedMmWeightGradSquaredNormCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                        const at::Tensor& sq_sum, WeightGradNormMethod method,
                                        int64_t gram_capacity) {
  TORCH_CHECK(GroupedMmWeightGradSquaredNormCudaSupports(a, b, sq_sum),
              "GroupedMmWeightGradSquaredNormCuda: needs contiguous bf16 sm90 CUDA a [N, K], b [N, M] with M a ",
              "multiple of 256 and an fp32 [1] sum on their device; got ", a.sizes(), ", ", b.sizes());
  TORCH_CHECK(a.size(0) == b.size(0), "GroupedMmWeightGradSquaredNormCuda: a has ", a.size(0), " rows, b ", b.size(0));
  CheckOffs(offs, offs.numel(), a, "GroupedMmWeightGradSquaredNormCuda");
  c10::cuda::CUDAGuard guard(a.device());
  CompactUpdateState state;
  state.hyper.grad_sq_sum = sq_sum.data_ptr<float>();
  state.squares_only = true;
  GroupedGemmArgs args = WeightGradArgs(a, b, offs, nullptr);
  if (method == WeightGradNormMethod::kAuto) method = PickWeightGradNormMethod(a.size(0), offs.numel(), a.size(1), b.size(1));
  // The flags stay allocated until the squares-only launch that reads them is queued (a block
  // freed earlier could be handed to its workspace and overwritten before the flags are read).
  at::Tensor done;
  if (method == WeightGradNormMethod::kGram) {
    const int64_t N = a.size(0), E = std::max<int64_t>(1, offs.numel());
    if (gram_capacity < 0) gram_capacity = std::min(N * N, 2 * N * N / E + (int64_t{1} << 20));
    gram_capacity = std::max<int64_t>(gram_capacity, 64);  // a valid pointer also when nothing fits
    at::Tensor gram = at::empty({gram_capacity}, a.options().dtype(at::kFloat));
    done = at::empty({offs.numel()}, a.options().dtype(at::kByte));
    const GroupedGemmArgs gram_args = WithCarveout(args);
    const size_t bytes = GramSquaredNormWorkspaceBytes(gram_args);
    at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
    const std::string error =
        LaunchGramSquaredNormSm90(gram_args, gram.data_ptr<float>(), gram_capacity, done.data_ptr<uint8_t>(),
                                  sq_sum.data_ptr<float>(), workspace.data_ptr(), bytes,
                                  at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(error.empty(), error);
    args.skip_groups = done.data_ptr<uint8_t>();  // the squares-only GEMM takes the groups left over
  }
  RunWeightGradCompactAdamW(args, state, a);
}

}  // namespace ftd::kernels
