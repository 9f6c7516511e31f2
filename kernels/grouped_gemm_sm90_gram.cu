// The weight gradient's squared norm from the groups' token Gram matrices
// (kernels/grouped_gemm_launch.h, LaunchGramSquaredNormSm90). For group g with rows a_g [T, K],
// b_g [T, M]: ||a_g^T b_g||_F^2 = sum_ij (a_g a_g^T)_ij (b_g b_g^T)_ij. Two launches of one
// CUTLASS 3.x sm90 ptr-array kernel (the 128x256 cooperative tile of kernels/grouped_gemm_sm90.cuh,
// both operands K-major rows of the same matrix) with an epilogue of their own: the first stores
// each a_g a_g^T in fp32, the second multiplies each b_g b_g^T tile into it and sums (warp sums
// added atomically, as the squares-only epilogue of kernels/grouped_gemm_sm90_wgrad_adamw.cu).
#include "cutlass/arch/barrier.h"
#include "kernels/adamw_compact_block.cuh"
#include "kernels/grouped_gemm_sm90_epilogue.cuh"

namespace ftd::kernels::sm90 {

namespace {

struct GramArguments {
  float* gram = nullptr;         // the first Gram of each group, [T_g, T_g] row-major at pos[g]
  const int64_t* pos = nullptr;  // [groups] on the device
  float* sq_sum = nullptr;       // multiply: the sum of products is added here
  bool multiply = false;         // false: store the accumulators into gram; true: multiply them into it
};

struct NoStorage {};

template <int kTileM, int kTileN>
class GramEpilogue : public AccumulatorEpilogue<GramArguments, NoStorage> {
  using Base = AccumulatorEpilogue<GramArguments, NoStorage>;

 public:
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const& args) {
    return args.gram != nullptr && args.pos != nullptr && (!args.multiply || args.sq_sum != nullptr);
  }

  CUTLASS_HOST_DEVICE GramEpilogue(Params const& params, TensorStorage&) : Base(params) {}

  template <class ProblemShapeMNKL, class TileShapeMNK, class TileCoordMNKL, class AccEngine, class AccLayout,
            class TiledMma, class TensorMapD>
  CUTLASS_DEVICE auto store(LoadPipeline, LoadPipelineState load_state, StorePipeline, StorePipelineState store_state,
                            ProblemShapeMNKL problem_shape_mnkl, TileShapeMNK, TileCoordMNKL tile_coord_mnkl,
                            cute::Tensor<AccEngine, AccLayout> accumulators, TiledMma tiled_mma, int thread_idx,
                            TensorStorage&, TensorMapD const&, int = -1) {
    using namespace cute;
    static_assert(size<0>(TileShapeMNK{}) == kTileM && size<1>(TileShapeMNK{}) == kTileN, "tile shape");
    const int rows = get<0>(problem_shape_mnkl);  // T_g (the Gram is square)
    const int row0 = get<0>(tile_coord_mnkl) * kTileM;
    const int col0 = get<1>(tile_coord_mnkl) * kTileN;
    const int group = get<3>(tile_coord_mnkl);
    // Each accumulator's (row, column) in the tile.
    Tensor coords = tiled_mma.get_thread_slice(thread_idx)
                        .partition_C(make_identity_tensor(make_shape(Int<kTileM>{}, Int<kTileN>{})));
    CUTE_STATIC_ASSERT_V(size(coords) == size(accumulators));
    float* gram = params_.gram + params_.pos[group];
    float sum = 0.0f;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(accumulators); ++i) {
      const int r = row0 + get<0>(coords(i)), c = col0 + get<1>(coords(i));
      if (r < rows && c < rows) {
        float* at = gram + static_cast<int64_t>(r) * rows + c;
        if (params_.multiply) {
          sum += accumulators(i) * *at;
        } else {
          *at = accumulators(i);
        }
      }
    }
    if (params_.multiply) compact_update::AddGradSquares(sum, params_.sq_sum);  // warp sum, one atomic add
    return cute::make_tuple(load_state, store_state);
  }
};

using Config = Cooperative128x256;
constexpr int kTileM = 128, kTileN = 256;

// Both operands are the group's rows [T, K], K-major: A as rows, B as the transposed weight of
// GroupedOperands::kRowsTimesWeightT.
using GramGemm = GroupedGemmWithEpilogue<Config, cutlass::layout::RowMajor, cutlass::layout::ColumnMajor,
                                         GramEpilogue<kTileM, kTileN>>;

// Per-problem arrays of both launches in the workspace (the a side's groups, then the b side's),
// and each group's Gram offset; 256-byte aligned each.
struct GramArrays {
  typename ProblemShape::UnderlyingProblemShape* shapes;
  const Element** a;
  const Element** b;
  typename GramGemm::StrideA* stride_a;
  typename GramGemm::StrideB* stride_b;
  int64_t* pos;
  size_t bytes;

  static GramArrays Carve(char* base, int groups) {
    GramArrays g{};
    WorkspaceCarver carve(base);
    const int problems = 2 * groups;
    g.shapes = carve.Take<typename ProblemShape::UnderlyingProblemShape>(problems);
    g.a = carve.Take<const Element*>(problems);
    g.b = carve.Take<const Element*>(problems);
    g.stride_a = carve.Take<typename GramGemm::StrideA>(problems);
    g.stride_b = carve.Take<typename GramGemm::StrideB>(problems);
    g.pos = carve.Take<int64_t>(groups);
    g.bytes = carve.bytes();
    return g;
  }
};

// One block: each group's rows into shared memory, then one thread places the Grams in order
// (a group that does not fit in what is left gets none: its flag in `done` stays 0), then the
// problems of both launches. Dynamic shared memory: groups int64.
__global__ void PrepareGramKernel(GroupedGemmArgs args, GramArrays out, int64_t capacity, uint8_t* done) {
  extern __shared__ int64_t placed[];  // rows, then the Gram's offset or -1
  const int groups = args.groups;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    const int e = args.first_group + g;
    placed[g] = args.offs[e] - (e == 0 ? 0 : args.offs[e - 1]);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t at = 0;
    for (int g = 0; g < groups; ++g) {
      const int64_t rows = placed[g], size = rows * rows;
      const bool fits = at + size <= capacity;
      out.pos[g] = fits ? at : 0;
      done[args.first_group + g] = fits ? 1 : 0;
      placed[g] = fits ? rows : -1;
      if (fits) at += size;
    }
  }
  __syncthreads();
  const auto* a = static_cast<const Element*>(args.a);
  const auto* b = static_cast<const Element*>(args.b);
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    const int e = args.first_group + g;
    const int64_t begin = e == 0 ? 0 : args.offs[e - 1];
    const int rows = placed[g] < 0 ? 0 : static_cast<int>(placed[g]);  // no rows: no tiles
    for (int side = 0; side < 2; ++side) {
      const int p = side * groups + g;
      const int64_t k = side == 0 ? args.k : args.m;
      const Element* rows_ptr = (side == 0 ? a : b) + begin * k;
      out.shapes[p] = {rows, rows, static_cast<int>(k)};
      out.a[p] = rows_ptr;
      out.b[p] = rows_ptr;
      out.stride_a[p] = LeadingStride<typename GramGemm::StrideA>(k);
      out.stride_b[p] = LeadingStride<typename GramGemm::StrideB>(k);
    }
  }
}

typename GramGemm::Gemm::Arguments MakeGramArguments(const GroupedGemmArgs& args, const GramArrays& g, int side,
                                                     const GramArguments& epilogue) {
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = SmCount(args.sm_count);
  const int first = side * args.groups;
  return {cutlass::gemm::GemmUniversalMode::kGrouped,
          {args.groups, g.shapes + first, nullptr},
          {g.a + first, g.stride_a + first, g.b + first, g.stride_b + first},
          {epilogue},
          hw};
}

}  // namespace

size_t GramWorkspaceBytes(const GroupedGemmArgs& args) {
  const GramArrays g = GramArrays::Carve(nullptr, args.groups);
  return g.bytes + GramGemm::Gemm::get_workspace_size(MakeGramArguments(args, g, 0, GramArguments{})) + 256;
}

std::string LaunchGram(const GroupedGemmArgs& args, float* gram, int64_t capacity, uint8_t* done,
                                  float* sq_sum, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (args.operands != GroupedOperands::kWeightGrad) return "Gram squared norm: needs the weight-gradient operands";
  const GramArrays g = GramArrays::Carve(static_cast<char*>(workspace), args.groups);
  PrepareGramKernel<<<1, 256, sizeof(int64_t) * args.groups, stream>>>(args, g, capacity, done);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return std::string("Gram prepare: ") + cudaGetErrorString(e);
  void* cutlass_workspace = static_cast<char*>(workspace) + g.bytes;
  for (int side = 0; side < 2; ++side) {
    GramArguments epilogue;
    epilogue.gram = gram;
    epilogue.pos = g.pos;
    epilogue.sq_sum = sq_sum;
    epilogue.multiply = side == 1;
    const auto arguments = MakeGramArguments(args, g, side, epilogue);
    const std::string what = side == 0 ? "Gram of a" : "Gram of b";
    if (g.bytes + GramGemm::Gemm::get_workspace_size(arguments) > workspace_bytes) return what + ": workspace too small";
    typename GramGemm::Gemm gemm;
    cutlass::Status s = gemm.can_implement(arguments);
    if (s != cutlass::Status::kSuccess) return what + " can_implement: " + cutlassGetStatusString(s);
    s = gemm.initialize(arguments, cutlass_workspace, stream);
    if (s != cutlass::Status::kSuccess) return what + " initialize: " + cutlassGetStatusString(s);
    s = gemm.run(stream);
    if (s != cutlass::Status::kSuccess) return what + " run: " + cutlassGetStatusString(s);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return what + ": " + cudaGetErrorString(e);
  }
  return "";
}

}  // namespace ftd::kernels::sm90
