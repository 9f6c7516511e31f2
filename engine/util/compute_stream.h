// The engine's kernels on a high-priority CUDA stream. Side work on low-priority streams (the
// optimizer stepped inside backward) then takes only the SMs the compute kernels leave free:
// when both have blocks waiting, the block scheduler serves the high-priority stream first.
#pragma once

#include <memory>

#include <c10/core/Device.h>

namespace ftd::engine {

class ComputeStreamScope {
 public:
  // No-op for a CPU device or a CPU-only build. Synchronises with the previous current stream
  // on entry and exit, so work queued before or after the scope stays ordered.
  explicit ComputeStreamScope(c10::Device device);
  ~ComputeStreamScope();
  ComputeStreamScope(const ComputeStreamScope&) = delete;
  ComputeStreamScope& operator=(const ComputeStreamScope&) = delete;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ftd::engine
