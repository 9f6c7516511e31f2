// The experts' weight-gradient GEMM with the compact AdamW update in its epilogue
// (kernels/grouped_gemm_launch.h, LaunchWeightGradCompactAdamWSm90): the same CUTLASS 3.x sm90
// ptr-array mainloop as kernels/grouped_gemm_sm90.cuh's 128x256 cooperative tile, and an epilogue
// that never writes the gradient. Each tile's fp32 accumulators are rounded to bf16 (what the
// GEMM alone would store) into shared memory; then each of the 8 consumer warps takes rows of the
// tile, and since a row's 256 columns are one block of the compact moments, the warp runs the
// block update of kernels/adamw_compact_block.cuh on it: the parameter, its low half and its
// moments are read and written once, the gradient not at all (4 of the 14 bytes per parameter
// an unfused step moves, and the dW tensor's memory). With squares_only the epilogue only sums
// the gradient's squares (the norm that clipping needs before any update).
#include "cutlass/arch/barrier.h"
#include "kernels/adamw_compact_block.cuh"
#include "kernels/grouped_gemm_sm90_epilogue.cuh"

namespace ftd::kernels::sm90 {

namespace {

using namespace compact_update;  // NOLINT: the shared block update

// The epilogue collective (kernels/grouped_gemm_sm90_epilogue.cuh) with its own shared memory: the
// tile staged as bf16 and the moments' code tables.
template <int kTileM, int kTileN, int kThreads>
struct CompactAdamWStorage {
  // A staged row's pitch in bf16 elements: 16 bytes of padding put the 8 rows a warp's
  // accumulator fragment covers in different banks.
  static constexpr int kPitch = kTileN + 8;
  alignas(128) uint16_t tile[kTileM * kPitch];  // bf16 bits
  CodeTables tables;
};

struct CompactAdamWArguments {
  CompactUpdateState state;
};

template <int kTileM, int kTileN, int kThreads>
class CompactAdamWEpilogue
    : public AccumulatorEpilogue<CompactAdamWArguments, CompactAdamWStorage<kTileM, kTileN, kThreads>> {
  using Base = AccumulatorEpilogue<CompactAdamWArguments, CompactAdamWStorage<kTileM, kTileN, kThreads>>;
  using Base::params_;
  static constexpr int kPitch = CompactAdamWStorage<kTileM, kTileN, kThreads>::kPitch;

 public:
  static_assert(kTileN == kCompactUpdateBlock, "a tile row must be one block of the moments");
  using typename Base::Arguments;
  using typename Base::LoadPipeline;
  using typename Base::LoadPipelineState;
  using typename Base::Params;
  using typename Base::StorePipeline;
  using typename Base::StorePipelineState;
  using typename Base::TensorStorage;

  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const& args) {
    return args.state.squares_only ? args.state.hyper.grad_sq_sum != nullptr
                                   : args.state.param != nullptr && args.state.step != nullptr;
  }

  CUTLASS_HOST_DEVICE CompactAdamWEpilogue(Params const& params, TensorStorage&) : Base(params) {}

  // One tile: stage the gradient, then update its rows, one warp per row at a time.
  template <class ProblemShapeMNKL, class TileShapeMNK, class TileCoordMNKL, class AccEngine, class AccLayout,
            class TiledMma, class TensorMapD>
  CUTLASS_DEVICE auto store(LoadPipeline, LoadPipelineState load_state, StorePipeline, StorePipelineState store_state,
                            ProblemShapeMNKL problem_shape_mnkl, TileShapeMNK, TileCoordMNKL tile_coord_mnkl,
                            cute::Tensor<AccEngine, AccLayout> accumulators, TiledMma tiled_mma, int thread_idx,
                            TensorStorage& storage, TensorMapD const&, int = -1) {
    using namespace cute;
    static_assert(size<0>(TileShapeMNK{}) == kTileM && size<1>(TileShapeMNK{}) == kTileN, "tile shape");
    const int M = get<0>(problem_shape_mnkl);
    const int N = get<1>(problem_shape_mnkl);
    const int m_coord = get<0>(tile_coord_mnkl);
    const int n_coord = get<1>(tile_coord_mnkl);
    const int group = get<3>(tile_coord_mnkl);
    cutlass::arch::NamedBarrier barrier(kThreads, cutlass::arch::ReservedNamedBarriers::EpilogueBarrier);

    barrier.sync();  // every warp has read the previous tile's rows
    Tensor staged = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(storage.tile)),
                                make_layout(make_shape(Int<kTileM>{}, Int<kTileN>{}), make_stride(Int<kPitch>{}, _1{})));
    Tensor mine = tiled_mma.get_thread_slice(thread_idx).partition_C(staged);
    CUTE_STATIC_ASSERT_V(size(mine) == size(accumulators));
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(accumulators); ++i) mine(i) = Element(accumulators(i));
    FillCodeTablesUnsynced(storage.tables, thread_idx, kThreads);
    barrier.sync();

    const CompactUpdateState& st = params_.state;
    const int warp = thread_idx / 32, lane = thread_idx % 32;
    const int rows = min(kTileM, M - m_coord * kTileM);
    if (st.squares_only) {  // the gradient norm of a step that updates later
      float g_sq = 0.0f;
      for (int r = warp; r < rows; r += kThreads / 32) {
        const uint4 g = *reinterpret_cast<const uint4*>(storage.tile + r * kPitch + lane * kPerLane);
        const uint16_t* bits = reinterpret_cast<const uint16_t*>(&g);
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < kPerLane; ++j) {
          const float v = __uint_as_float(static_cast<uint32_t>(bits[j]) << 16);
          g_sq += v * v;
        }
      }
      AddGradSquares(g_sq, st.hyper.grad_sq_sum);
      return cute::make_tuple(load_state, store_state);
    }
    auto* p = static_cast<uint16_t*>(st.param);
    const StepValues sv = Values(st.step, st.hyper);
    // The group's weight is [M, N] at offset group * M * N of the stacked [E, M, N] parameter;
    // N % 256 == 0, so row m's columns [n0, n0 + 256) are block (offset + m * N + n0) / 256.
    const int64_t group_offset = static_cast<int64_t>(group) * M * N;
    const int n0 = n_coord * kTileN;
    auto offset = [&](int r) { return group_offset + static_cast<int64_t>(m_coord * kTileM + r) * N + n0; };
    auto load = [&](LaneData<uint16_t, uint16_t>& d, int r) {
      const int64_t o = offset(r);
      d.LoadFull(p, st.master_low, storage.tile + r * kPitch + lane * kPerLane, st.r_codes, st.s_codes, st.s_max,
                 st.r_scale, o / kCompactUpdateBlock, o + lane * kPerLane);
    };
    // Warp w takes rows w, w + 8, ...; kDepth of its rows' loads are in flight while one is
    // computed (8 warps an SM must keep as many bytes moving as the element-wise kernel's 24).
    constexpr int kWarps = kThreads / 32, kRowsPerWarp = kTileM / kWarps, kDepth = 4;
    static_assert(kRowsPerWarp % kDepth == 0, "whole rounds of loads");
    float g_sq = 0.0f;
    LaneData<uint16_t, uint16_t> ahead[kDepth];
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kDepth; ++j) {
      if (warp + j * kWarps < rows) load(ahead[j], warp + j * kWarps);
    }
    CUTLASS_PRAGMA_NO_UNROLL
    for (int base = 0; base < kRowsPerWarp; base += kDepth) {
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < kDepth; ++j) {
        const int r = warp + (base + j) * kWarps;
        if (r < rows) {  // warp-uniform
          const LaneData<uint16_t, uint16_t> cur = ahead[j];
          if (r + kDepth * kWarps < rows) load(ahead[j], r + kDepth * kWarps);
          if (!IdleBlock(cur, st.skip_idle)) {
            g_sq += UpdateBlock<uint16_t, uint16_t>(cur, p, st.master_low, st.r_codes, st.s_codes, st.r_scale,
                                                    st.s_max, offset(r) / kCompactUpdateBlock, kPerLane, st.hyper, sv,
                                                    storage.tables);
          }
        }
      }
    }
    AddGradSquares(g_sq, st.hyper.grad_sq_sum);
    return cute::make_tuple(load_state, store_state);
  }
};

using Config = Cooperative128x256;
constexpr int kTileM = 128, kTileN = 256, kConsumerThreads = 256;  // two consumer warpgroups

using FusedWeightGrad =
    GroupedGemmWithEpilogue<Config, OperandLayouts<GroupedOperands::kWeightGrad>::A,
                            OperandLayouts<GroupedOperands::kWeightGrad>::B,
                            CompactAdamWEpilogue<kTileM, kTileN, kConsumerThreads>>;
static_assert(cute::size(typename FusedWeightGrad::CollectiveMainloop::TiledMma{}) == kConsumerThreads);

typename FusedWeightGrad::Gemm::Arguments MakeFusedArguments(const GroupedGemmArgs& args,
                                                             const GroupArrays<FusedWeightGrad>& g,
                                                             const CompactUpdateState& state) {
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = SmCount(args.sm_count);
  return {cutlass::gemm::GemmUniversalMode::kGrouped,
          {args.groups, g.shapes, nullptr},
          {g.a, g.stride_a, g.b, g.stride_b},
          {state},
          hw};
}

}  // namespace

size_t WeightGradCompactAdamWWorkspaceBytes(const GroupedGemmArgs& args) {
  auto g = GroupArrays<FusedWeightGrad>::Carve(nullptr, args.groups, ZeroElements<GroupedOperands::kWeightGrad>(args));
  return g.bytes + FusedWeightGrad::Gemm::get_workspace_size(MakeFusedArguments(args, g, CompactUpdateState{})) + 256;
}

std::string LaunchWeightGradCompactAdamW(const GroupedGemmArgs& args, const CompactUpdateState& state,
                                         void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (args.operands != GroupedOperands::kWeightGrad || args.m % kTileN != 0) {
    return "grouped GEMM with AdamW: needs the weight-gradient operands and output columns a multiple of 256";
  }
  auto g = GroupArrays<FusedWeightGrad>::Carve(static_cast<char*>(workspace), args.groups,
                                               ZeroElements<GroupedOperands::kWeightGrad>(args));
  return LaunchPrepared<GroupedOperands::kWeightGrad, FusedWeightGrad>(
      args, g, MakeFusedArguments(args, g, state), workspace, workspace_bytes, stream, "grouped GEMM with AdamW");
}

}  // namespace ftd::kernels::sm90
