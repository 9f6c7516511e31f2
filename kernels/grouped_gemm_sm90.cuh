// The grouped GEMM's CUTLASS 3.x instantiations (sm90 ptr-array kernels: TMA loads, wgmma,
// warp-specialised persistent CTAs, TMA-store epilogue). Included by one .cu per operand layout
// (kernels/grouped_gemm_sm90_{rows,rows_t,wgrad}.cu) so the heavy instantiations compile in
// parallel. A one-block kernel turns the device-side offsets into CUTLASS's per-group problem
// shapes, pointers and strides, so nothing waits on the host.
#pragma once

#include <cstdint>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "kernels/grouped_gemm_launch.h"

namespace ftd::kernels::sm90 {

using Element = cutlass::bfloat16_t;
using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // <M, N, K> per group

struct Pingpong64x256 {
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
  using TileShape = cute::Shape<cute::_64, cute::_256, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
};
struct Cooperative128x256 {
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
  using TileShape = cute::Shape<cute::_128, cute::_256, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
};
struct Pingpong128x128 {
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
  using TileShape = cute::Shape<cute::_128, cute::_128, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
};

template <class Config>
struct Cluster2AlongM : Config {
  using ClusterShape = cute::Shape<cute::_2, cute::_1, cute::_1>;
};

// CUTLASS's A is [M, K], B is [K, N] (cute indexes it (N, K)), D is [M, N] row-major.
template <GroupedOperands Ops>
struct OperandLayouts;
template <>
struct OperandLayouts<GroupedOperands::kRowsTimesWeight> {  // A rows (K-major), B w[g] [K, M] (N-major)
  using A = cutlass::layout::RowMajor;
  using B = cutlass::layout::RowMajor;
};
template <>
struct OperandLayouts<GroupedOperands::kRowsTimesWeightT> {  // B = w[g]^T, w[g] [M, K] (K-major)
  using A = cutlass::layout::RowMajor;
  using B = cutlass::layout::ColumnMajor;
};
template <>
struct OperandLayouts<GroupedOperands::kWeightGrad> {  // A = a_g^T (M-major), B = b_g [rows, M] (N-major)
  using A = cutlass::layout::ColumnMajor;
  using B = cutlass::layout::RowMajor;
};

// A grouped GEMM of tile Config with epilogue collective Epilogue (its shared memory carved out
// of the mainloop's stages): bf16 operands 16-byte aligned, fp32 accumulation.
template <class Config, class LayoutA_, class LayoutB_, class Epilogue>
struct GroupedGemmWithEpilogue {
  using LayoutA = LayoutA_;
  using LayoutB = LayoutB_;
  static constexpr int kAlign = 8;  // 16 bytes of bf16
  using CollectiveEpilogue = Epilogue;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element, LayoutB*, kAlign,
      float, typename Config::TileShape, typename Config::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Config::KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;
};

// The plain grouped GEMM: D stored as bf16 by CUTLASS's TMA epilogue.
template <class Config>
using StoreEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename Config::TileShape, typename Config::ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, cutlass::layout::RowMajor*, 8, Element,
    cutlass::layout::RowMajor*, 8, typename Config::EpilogueSchedule,
    cutlass::epilogue::fusion::LinearCombination<Element, float, void, float>>::CollectiveOp;

template <GroupedOperands Ops, class Config>
using GroupedGemm = GroupedGemmWithEpilogue<Config, typename OperandLayouts<Ops>::A, typename OperandLayouts<Ops>::B,
                                            StoreEpilogue<Config>>;

// A packed stride whose one dynamic component (the leading dimension) is `ld`.
template <class Stride>
__device__ Stride LeadingStride(int64_t ld) {
  Stride s{};
  if constexpr (cute::is_static<cute::remove_cvref_t<decltype(cute::get<0>(s))>>::value) {
    cute::get<1>(s) = ld;
  } else {
    cute::get<0>(s) = ld;
  }
  return s;
}

// Rows of zeros an empty weight-gradient group multiplies: the smallest K a TMA load of bf16 takes.
constexpr int kZeroRows = 8;

// Lays arrays out one after another in a workspace, each 256-byte aligned. With a null base it
// only adds up the bytes (the pointers it returns are then not to be used).
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(char* base) : base_(reinterpret_cast<uintptr_t>(base)) {}

  template <class T>
  T* Take(int64_t count) {
    const uintptr_t p = base_ + bytes_;
    bytes_ += (sizeof(T) * static_cast<size_t>(count) + 255) / 256 * 256;
    return reinterpret_cast<T*>(p);
  }
  size_t bytes() const { return bytes_; }

 private:
  uintptr_t base_;
  size_t bytes_ = 0;
};

// Per-group arguments in the workspace, 256-byte aligned each.
template <class G>
struct GroupArrays {
  typename ProblemShape::UnderlyingProblemShape* shapes;
  const Element** a;
  const Element** b;
  Element** d;
  typename G::StrideA* stride_a;
  typename G::StrideB* stride_b;
  typename G::StrideD* stride_d;
  Element* zeros;  // kZeroRows x max(k, m) zeros: an empty weight-gradient group's operands
  size_t bytes;

  static GroupArrays Carve(char* base, int groups, int64_t zero_elements) {
    GroupArrays g{};
    WorkspaceCarver carve(base);
    g.shapes = carve.Take<typename ProblemShape::UnderlyingProblemShape>(groups);
    g.a = carve.Take<const Element*>(groups);
    g.b = carve.Take<const Element*>(groups);
    g.d = carve.Take<Element*>(groups);
    g.stride_a = carve.Take<typename G::StrideA>(groups);
    g.stride_b = carve.Take<typename G::StrideB>(groups);
    g.stride_d = carve.Take<typename G::StrideD>(groups);
    g.zeros = carve.Take<Element>(zero_elements);
    g.bytes = carve.bytes();
    return g;
  }
};

template <GroupedOperands Ops, class G>
__global__ void PrepareGroupsKernel(GroupedGemmArgs args, GroupArrays<G> out) {
  const auto* a = static_cast<const Element*>(args.a);
  const auto* b = static_cast<const Element*>(args.b);
  auto* d = static_cast<Element*>(args.d);
  const int64_t K = args.k, M = args.m;
  if constexpr (Ops == GroupedOperands::kWeightGrad) {
    for (int64_t i = threadIdx.x; i < kZeroRows * (K > M ? K : M); i += blockDim.x) {
      out.zeros[i] = Element(0.0f);
    }
  }
  for (int g = threadIdx.x; g < args.groups; g += blockDim.x) {
    const int e = args.first_group + g;  // the group's index in offs (and in b, rows layouts)
    const int64_t begin = e == 0 ? 0 : args.offs[e - 1];
    const int rows = static_cast<int>(args.offs[e] - begin);
    if constexpr (Ops == GroupedOperands::kWeightGrad) {
      // [K, M] = a_g^T [K, rows] @ b_g [rows, M]. A K of 0 would leave the accumulators unset, so
      // an empty group multiplies kZeroRows rows of zeros instead: its gradient is written as 0.
      // A skipped group has no output rows, so no tiles.
      const bool empty = rows == 0;
      const bool skipped = args.skip_groups != nullptr && args.skip_groups[e] != 0;
      out.shapes[g] = {skipped ? 0 : static_cast<int>(K), static_cast<int>(M), empty ? int{kZeroRows} : rows};
      out.a[g] = empty ? out.zeros : a + begin * K;
      out.b[g] = empty ? out.zeros : b + begin * M;
      out.d[g] = d + g * K * M;
      out.stride_a[g] = LeadingStride<typename G::StrideA>(K);
      out.stride_b[g] = LeadingStride<typename G::StrideB>(M);
    } else {
      out.shapes[g] = {rows, static_cast<int>(M), static_cast<int>(K)};
      out.a[g] = a + begin * K;
      out.b[g] = b + e * K * M;
      out.d[g] = d + begin * M;
      out.stride_a[g] = LeadingStride<typename G::StrideA>(K);
      out.stride_b[g] = LeadingStride<typename G::StrideB>(Ops == GroupedOperands::kRowsTimesWeight ? M : K);
    }
    out.stride_d[g] = LeadingStride<typename G::StrideD>(M);
  }
}

template <GroupedOperands Ops>
int64_t ZeroElements(const GroupedGemmArgs& args) {
  return Ops == GroupedOperands::kWeightGrad ? kZeroRows * (args.k > args.m ? args.k : args.m) : 0;
}

// The device's SMs, or `limit` of them when 0 < limit < that (GroupedGemmArgs::sm_count).
inline int SmCount(int limit = 0) {
  static const int sms = [] {
    int device = 0, count = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    return count;
  }();
  return limit > 0 && limit < sms ? limit : sms;
}

template <GroupedOperands Ops, class Config>
typename GroupedGemm<Ops, Config>::Gemm::Arguments MakeArguments(const GroupedGemmArgs& args,
                                                                  const GroupArrays<GroupedGemm<Ops, Config>>& g) {
  using G = GroupedGemm<Ops, Config>;
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = SmCount(args.sm_count);
  typename G::Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {args.groups, g.shapes, nullptr},  // problem shapes on the device only
      {g.a, g.stride_a, g.b, g.stride_b},
      {{}, nullptr, g.stride_d, g.d, g.stride_d},
      hw};
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;
  return arguments;
}

template <GroupedOperands Ops, class Config>
size_t WorkspaceBytes(const GroupedGemmArgs& args) {
  using G = GroupedGemm<Ops, Config>;
  auto g = GroupArrays<G>::Carve(nullptr, args.groups, ZeroElements<Ops>(args));
  return g.bytes + G::Gemm::get_workspace_size(MakeArguments<Ops, Config>(args, g)) + 256;
}

// The launch of G (any epilogue) with its per-group arrays g carved from the front of the
// workspace: the groups prepared on the device, then CUTLASS's checks, set-up and run; "" or
// what failed, named `what`.
template <GroupedOperands Ops, class G>
std::string LaunchPrepared(const GroupedGemmArgs& args, const GroupArrays<G>& g,
                           const typename G::Gemm::Arguments& arguments, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream, const std::string& what) {
  const size_t cutlass_bytes = G::Gemm::get_workspace_size(arguments);
  if (g.bytes + cutlass_bytes > workspace_bytes) return what + ": workspace too small";
  PrepareGroupsKernel<Ops, G><<<1, 256, 0, stream>>>(args, g);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return what + " prepare: " + cudaGetErrorString(e);
  typename G::Gemm gemm;
  cutlass::Status s = gemm.can_implement(arguments);
  if (s != cutlass::Status::kSuccess) return what + " can_implement: " + cutlassGetStatusString(s);
  s = gemm.initialize(arguments, static_cast<char*>(workspace) + g.bytes, stream);
  if (s != cutlass::Status::kSuccess) return what + " initialize: " + cutlassGetStatusString(s);
  s = gemm.run(stream);
  if (s != cutlass::Status::kSuccess) return what + " run: " + cutlassGetStatusString(s);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return what + ": " + cudaGetErrorString(e);
  return "";
}

template <GroupedOperands Ops, class Config>
std::string Launch(const GroupedGemmArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  using G = GroupedGemm<Ops, Config>;
  auto g = GroupArrays<G>::Carve(static_cast<char*>(workspace), args.groups, ZeroElements<Ops>(args));
  return LaunchPrepared<Ops, G>(args, g, MakeArguments<Ops, Config>(args, g), workspace, workspace_bytes, stream,
                                "grouped GEMM");
}

// The three tiles of one operand layout, by enum.
template <GroupedOperands Ops>
size_t WorkspaceBytesFor(const GroupedGemmArgs& args, GroupedGemmTile tile) {
  switch (tile) {
    case GroupedGemmTile::kPingpong64x256: return WorkspaceBytes<Ops, Pingpong64x256>(args);
    case GroupedGemmTile::kCooperative128x256: return WorkspaceBytes<Ops, Cooperative128x256>(args);
    case GroupedGemmTile::kPingpong128x128: return WorkspaceBytes<Ops, Pingpong128x128>(args);
    case GroupedGemmTile::kPingpong64x256Cluster2: return WorkspaceBytes<Ops, Cluster2AlongM<Pingpong64x256>>(args);
    case GroupedGemmTile::kCooperative128x256Cluster2:
      return WorkspaceBytes<Ops, Cluster2AlongM<Cooperative128x256>>(args);
  }
  return 0;
}

template <GroupedOperands Ops>
std::string LaunchFor(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace, size_t bytes,
                      cudaStream_t stream) {
  switch (tile) {
    case GroupedGemmTile::kPingpong64x256: return Launch<Ops, Pingpong64x256>(args, workspace, bytes, stream);
    case GroupedGemmTile::kCooperative128x256: return Launch<Ops, Cooperative128x256>(args, workspace, bytes, stream);
    case GroupedGemmTile::kPingpong128x128: return Launch<Ops, Pingpong128x128>(args, workspace, bytes, stream);
    case GroupedGemmTile::kPingpong64x256Cluster2:
      return Launch<Ops, Cluster2AlongM<Pingpong64x256>>(args, workspace, bytes, stream);
    case GroupedGemmTile::kCooperative128x256Cluster2:
      return Launch<Ops, Cluster2AlongM<Cooperative128x256>>(args, workspace, bytes, stream);
  }
  return "grouped GEMM: unknown tile";
}

}  // namespace ftd::kernels::sm90
