// The routed experts of one MoE layer as one autograd op on CUDA (bf16, no expert parallelism):
//   rows = permute(x) -> h = grouped_mm(rows, gate_up) -> act = SwiGLU(h) * w_row
//   -> y = grouped_mm(act, down) -> out = unpermute-sum(y)
// Memory plan: of the [T*k, *] intermediates only h [T*k, 2F] is saved for backward; the
// permuted rows [T*k, H] (a gather of x, which is kept anyway) and act [T*k, F] (SwiGLU of h)
// are recomputed there: 2 memory-bound kernels (~0.13 ms at the Qwen3-30B-A3B shape) buy
// back (H + F) * T*k * 2 bytes per layer (184 MB at seq 4096).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace ftd::engine {

// x [T, H]; order/inverse from kernels::SortByExpert; row_weights [T*k] in expert order;
// counts [E] int64; gate_up [E, H, 2F], down [E, F, H]. Returns [T, H]. save_activation keeps
// act [T*k, F] for backward instead of recomputing it (F * T*k * 2 bytes for ~0.06 ms).
at::Tensor ExpertMlpRecompute(const at::Tensor& x, const at::Tensor& order, const at::Tensor& inverse,
                              const at::Tensor& row_weights, const at::Tensor& counts, const at::Tensor& gate_up,
                              const at::Tensor& down, int64_t k, bool save_activation = false);

// Whether ExpertMlpRecompute serves these tensors (CUDA build, bf16 CUDA tensors).
bool ExpertMlpRecomputeSupports(const at::Tensor& x, const at::Tensor& row_weights, const at::Tensor& gate_up);

}  // namespace ftd::engine
