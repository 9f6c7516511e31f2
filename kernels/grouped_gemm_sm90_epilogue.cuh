// The common part of the grouped GEMM's own epilogues (kernels/grouped_gemm_sm90_wgrad_adamw.cu,
// kernels/grouped_gemm_sm90_gram.cu): an epilogue collective for CUTLASS's sm90 ptr-array
// warp-specialised kernels that loads no C and stores no D by TMA (the interface of CUTLASS's
// Sm90TmaWarpSpecializedAdapter, whose no-shared-memory epilogues it mirrors). A derived class
// adds its constructor, can_implement and store(), which gets each tile's fp32 accumulators.
#pragma once

#include "cutlass/epilogue/thread/linear_combination.h"
#include "kernels/grouped_gemm_sm90.cuh"

namespace ftd::kernels::sm90 {

// Arguments_: what the host passes (also the kernel's Params); Storage: the shared memory the
// derived epilogue uses.
template <class Arguments_, class Storage>
class AccumulatorEpilogue {
 public:
  using DispatchPolicy = cutlass::epilogue::PtrArrayNoSmemWarpSpecialized;
  using EpilogueSchedule = DispatchPolicy;
  // Nothing is loaded as C or stored as D; the types only satisfy the kernel's aliases.
  using ElementC = Element;
  using ElementD = Element;
  using InternalStrideC = cute::Stride<int64_t, cute::Int<1>, cute::Int<0>>;
  using StrideC = InternalStrideC*;
  using InternalStrideD = InternalStrideC;
  using StrideD = InternalStrideD*;
  using GmemTiledCopyC = void;
  using GmemTiledCopyD = void;
  using ThreadEpilogueOp = cutlass::epilogue::thread::LinearCombination<Element, 1, float, float>;  // (an alias only)
  using LoadPipeline = cutlass::PipelineTransactionAsync<0>;
  using LoadPipelineState = cutlass::PipelineState<0>;
  static constexpr uint32_t TmaTransactionBytes = 0;
  static constexpr bool RequiresTransactionBytes = false;
  using StorePipeline = cutlass::PipelineTmaStore<0>;
  using StorePipelineState = cutlass::PipelineState<0>;

  using TensorStorage = Storage;
  using SharedStorage = Storage;
  struct TensorMapStorage {};
  using PipelineStorage = typename LoadPipeline::SharedStorage;

  using Arguments = Arguments_;
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&, int) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
  template <class CtaTileMNK>
  CUTLASS_HOST_DEVICE static constexpr int get_load_pipe_increment(CtaTileMNK) {
    return 1;
  }
  template <class CtaTileMNK>
  CUTLASS_HOST_DEVICE static constexpr int get_store_pipe_increment(CtaTileMNK) {
    return 1;
  }
  CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const&) {}

  CUTLASS_HOST_DEVICE explicit AccumulatorEpilogue(Params const& params) : params_(params) {}

  CUTLASS_DEVICE bool is_producer_load_needed() const { return false; }
  CUTLASS_DEVICE auto load_init(Params const&, TensorMapStorage&, int32_t, int32_t) {
    return cute::make_tuple(nullptr);
  }
  template <class... Ts>
  CUTLASS_DEVICE auto load(LoadPipeline, LoadPipelineState state, Ts&&...) {
    return state;
  }
  CUTLASS_DEVICE auto load_tail(LoadPipeline, LoadPipelineState state) { return state; }
  CUTLASS_DEVICE auto store_init(Params const&, TensorMapStorage&, int32_t, int32_t, int32_t) {
    return cute::make_tuple(nullptr);
  }
  CUTLASS_DEVICE auto store_tail(LoadPipeline, LoadPipelineState load_state, StorePipeline,
                                 StorePipelineState store_state) {
    return cute::make_tuple(load_state, store_state);
  }
  template <bool IsLoad, class ProblemShapeMNKL>
  CUTLASS_DEVICE void tensormaps_perform_update(TensorMapStorage&, Params const&, cute::TmaDescriptor const*,
                                                ProblemShapeMNKL, int32_t, int32_t) {}
  template <bool IsLoad>
  CUTLASS_DEVICE void tensormaps_cp_fence_release(TensorMapStorage&, cute::TmaDescriptor const*, int32_t) {}
  template <bool IsLoad>
  CUTLASS_DEVICE void tensormaps_fence_acquire(cute::TmaDescriptor const*) {}

 protected:
  Params params_;
};

}  // namespace ftd::kernels::sm90
