// What a compact AdamW update reads besides the gradient (kernels/adamw_compact.h describes the
// state), as plain pointers and numbers: the launchers of kernels/adamw_compact.cu and of the
// grouped GEMM with the update in its epilogue (kernels/grouped_gemm_launch.h) take it. Free of
// CUDA and LibTorch headers.
#pragma once

#include <cstdint>

namespace ftd::kernels {

// Elements per block of the compact moments (kernels/adamw_compact.h's kCompactBlock).
constexpr int kCompactUpdateBlock = 256;

// The step's hyperparameters as the kernels read them. 1 - beta is rounded to fp32 from double,
// as the reference does.
struct CompactUpdateHyper {
  float lr, grad_scale, beta1, beta2, one_minus_beta1, one_minus_beta2, decay, eps;
  double beta1_d, beta2_d;
  const float* dev;    // (lr, grad_scale) on the device, or null
  float* grad_sq_sum;  // where to add the sum of squares of the scaled gradients, or null
  // Stochastic rounding of a bf16 parameter without a low half (kernels/stochastic_round.h):
  // the parameter's salt, and the index in the whole parameter of the first element updated.
  uint32_t round_salt = 0;
  int64_t round_index_base = 0;
};

// A bf16 parameter of n elements with its compact state, all on the device.
struct CompactUpdateState {
  void* param = nullptr;  // bf16 [n]
  int16_t* master_low = nullptr;  // [n]
  int8_t* r_codes = nullptr;      // [n]
  uint8_t* s_codes = nullptr;     // [n]
  float* r_scale = nullptr;       // [blocks]
  float* s_max = nullptr;         // [blocks]
  const float* step = nullptr;    // [] the step count, already incremented
  CompactUpdateHyper hyper{};
  // Blocks whose moments and gradient are zero are left unwritten (exact without weight decay).
  bool skip_idle = false;
  // Only add the gradient's sum of squares (unscaled) to hyper.grad_sq_sum: nothing is updated,
  // and only step and hyper.grad_sq_sum are read of this state.
  bool squares_only = false;
};

}  // namespace ftd::kernels
