#include "kernels/grouped_gemm.h"

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#ifdef FTD_WITH_CUTLASS
#include <cuda_runtime.h>
#endif

namespace ftd::kernels {

namespace {

// Each group's [begin, end) from offs (read on the host: the references are not on a hot path).
std::vector<std::pair<int64_t, int64_t>> GroupBounds(const at::Tensor& offs) {
  at::Tensor host = offs.to(at::kCPU, at::kLong).contiguous();
  std::vector<std::pair<int64_t, int64_t>> bounds;
  int64_t begin = 0;
  for (int64_t g = 0; g < host.numel(); ++g) {
    const int64_t end = host.data_ptr<int64_t>()[g];
    TORCH_CHECK(end >= begin, "grouped GEMM: offs must be non-decreasing, offs[", g, "] = ", end, " < ", begin);
    bounds.emplace_back(begin, end);
    begin = end;
  }
  return bounds;
}

at::ScalarType MathType(const at::Tensor& t) { return at::promote_types(t.scalar_type(), at::kFloat); }

bool Sm90(const at::Tensor& t) {
#ifdef FTD_WITH_CUTLASS
  if (!t.is_cuda()) return false;
  static const bool sm90 = [] {
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    return major == 9;
  }();
  return sm90;
#else
  (void)t;
  return false;
#endif
}

}  // namespace

at::Tensor GroupedMmReference(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs) {
  TORCH_CHECK(rows.dim() == 2 && w.dim() == 3 && rows.size(1) == w.size(1) && offs.numel() == w.size(0),
              "GroupedMm: rows [N, K], w [E, K, M], offs [E] expected, got ", rows.sizes(), ", ", w.sizes(), ", ",
              offs.sizes());
  at::Tensor out = at::zeros({rows.size(0), w.size(2)}, rows.options());
  const auto m = MathType(rows);
  int64_t g = 0;
  for (const auto& [begin, end] : GroupBounds(offs)) {
    TORCH_CHECK(end <= rows.size(0), "GroupedMm: offs[", g, "] = ", end, " exceeds the ", rows.size(0), " rows");
    if (end > begin) out.narrow(0, begin, end - begin).copy_(at::mm(rows.narrow(0, begin, end - begin).to(m), w[g].to(m)));
    ++g;
  }
  return out;
}

at::Tensor GroupedMmWeightGradReference(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(0) == b.size(0),
              "GroupedMmWeightGrad: a [N, K], b [N, M] expected, got ", a.sizes(), ", ", b.sizes());
  at::Tensor out = at::zeros({offs.numel(), a.size(1), b.size(1)}, a.options());
  const auto m = MathType(a);
  int64_t g = 0;
  for (const auto& [begin, end] : GroupBounds(offs)) {
    TORCH_CHECK(end <= a.size(0), "GroupedMmWeightGrad: offs[", g, "] = ", end, " exceeds the ", a.size(0), " rows");
    if (end > begin) {
      out[g].copy_(at::mm(a.narrow(0, begin, end - begin).to(m).t(), b.narrow(0, begin, end - begin).to(m)));
    }
    ++g;
  }
  return out;
}

bool GroupedMmCudaSupports(const at::Tensor& rows, const at::Tensor& w) {
  if (!Sm90(rows) || rows.scalar_type() != at::kBFloat16 || w.scalar_type() != at::kBFloat16) return false;
  if (rows.dim() != 2 || w.dim() != 3 || !rows.is_contiguous()) return false;
  const bool plain = w.is_contiguous();
  const bool transposed = w.transpose(1, 2).is_contiguous();
  return (plain || transposed) && rows.size(1) % 8 == 0 && w.size(2) % 8 == 0;
}

bool GroupedMmWeightGradCudaSupports(const at::Tensor& a, const at::Tensor& b) {
  return Sm90(a) && a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 && a.dim() == 2 &&
         b.dim() == 2 && a.is_contiguous() && b.is_contiguous() && a.size(1) % 8 == 0 && b.size(1) % 8 == 0;
}

namespace {

// FTD_GROUPED_GEMM_TILES="rows=<tile>,rows_t=<tile>,wgrad=<tile>" (any subset; tile names as
// GroupedGemmTileName) overrides the defaults, for benchmarking; read once.
std::optional<GroupedGemmTile> TileFromEnvironment(GroupedOperands operands) {
  static const std::vector<std::optional<GroupedGemmTile>> tiles = [] {
    std::vector<std::optional<GroupedGemmTile>> t(3);
    const char* env = std::getenv("FTD_GROUPED_GEMM_TILES");
    std::string s = env ? env : "";
    size_t at = 0;
    while (at < s.size()) {
      size_t end = s.find(',', at);
      if (end == std::string::npos) end = s.size();
      const std::string item = s.substr(at, end - at);
      at = end + 1;
      const size_t eq = item.find('=');
      const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
      const int slot = key == "rows" ? 0 : key == "rows_t" ? 1 : key == "wgrad" ? 2 : -1;
      bool found = false;
      for (int i = 0; i < kGroupedGemmTileCount && slot >= 0; ++i) {
        if (value == GroupedGemmTileName(static_cast<GroupedGemmTile>(i))) {
          t[slot] = static_cast<GroupedGemmTile>(i);
          found = true;
        }
      }
      TORCH_CHECK(found, "FTD_GROUPED_GEMM_TILES: \"", item, "\" is not <rows|rows_t|wgrad>=<tile name>");
    }
    return t;
  }();
  return tiles[static_cast<int>(operands)];
}

}  // namespace

GroupedGemmTile DefaultGroupedGemmTile(GroupedOperands operands) {
  if (auto t = TileFromEnvironment(operands)) return *t;
  // Measured on an H100 (ftd-kernel-bench grouped_gemm, four families' expert shapes): the
  // 128x256 cooperative tile is the fastest or within a few percent of it for every layout.
  return GroupedGemmTile::kCooperative128x256;
}

at::Tensor GroupedMm(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs,
                     std::optional<GroupedGemmTile> tile) {
  if (!GroupedMmCudaSupports(rows, w)) return GroupedMmReference(rows, w, offs);
  const auto ops = w.is_contiguous() ? GroupedOperands::kRowsTimesWeight : GroupedOperands::kRowsTimesWeightT;
  return GroupedMmCuda(rows, w, offs, tile.value_or(DefaultGroupedGemmTile(ops)));
}

at::Tensor GroupedMmWeightGrad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                               std::optional<GroupedGemmTile> tile) {
  if (!GroupedMmWeightGradCudaSupports(a, b)) return GroupedMmWeightGradReference(a, b, offs);
  return GroupedMmWeightGradCuda(a, b, offs, tile.value_or(DefaultGroupedGemmTile(GroupedOperands::kWeightGrad)));
}

at::Tensor GroupedMmWeightGradGroups(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs, int64_t first,
                                     int64_t count) {
  TORCH_CHECK(first >= 0 && count >= 0 && first + count <= offs.numel(), "GroupedMmWeightGradGroups: groups [", first,
              ", ", first + count, ") outside the ", offs.numel(), " of offs");
  if (!GroupedMmWeightGradCudaSupports(a, b)) return GroupedMmWeightGradReference(a, b, offs).narrow(0, first, count);
  return GroupedMmWeightGradGroupsCuda(a, b, offs, first, count,
                                       DefaultGroupedGemmTile(GroupedOperands::kWeightGrad));
}

#ifndef FTD_WITH_CUTLASS
at::Tensor GroupedMmCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, GroupedGemmTile) {
  TORCH_CHECK(false, "GroupedMmCuda: this build has no CUTLASS grouped GEMM (FTD_WITH_CUTLASS)");
}
at::Tensor GroupedMmWeightGradCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, GroupedGemmTile) {
  TORCH_CHECK(false, "GroupedMmWeightGradCuda: this build has no CUTLASS grouped GEMM (FTD_WITH_CUTLASS)");
}
at::Tensor GroupedMmWeightGradGroupsCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                         GroupedGemmTile) {
  TORCH_CHECK(false, "GroupedMmWeightGradGroupsCuda: this build has no CUTLASS grouped GEMM (FTD_WITH_CUTLASS)");
}
#endif

}  // namespace ftd::kernels
