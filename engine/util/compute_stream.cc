#include "engine/util/compute_stream.h"

#ifdef FTD_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ftd::engine {

#ifdef FTD_WITH_CUDA
struct ComputeStreamScope::State {
  explicit State(c10::cuda::CUDAStream s) : previous(c10::cuda::getCurrentCUDAStream(s.device_index())), guard(s) {}
  c10::cuda::CUDAStream previous;
  c10::cuda::CUDAStreamGuard guard;
};

namespace {
// `waiter` waits for the work queued on `done` so far.
void Order(c10::cuda::CUDAStream done, c10::cuda::CUDAStream waiter) {
  at::cuda::CUDAEvent event;
  event.record(done);
  event.block(waiter);
}
}  // namespace

ComputeStreamScope::ComputeStreamScope(c10::Device device) {
  if (!device.is_cuda()) return;
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device.index());
  Order(c10::cuda::getCurrentCUDAStream(device.index()), stream);
  state_ = std::make_unique<State>(stream);
}

ComputeStreamScope::~ComputeStreamScope() {
  if (!state_) return;
  c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(state_->previous.device_index());
  Order(stream, state_->previous);
}
#else
struct ComputeStreamScope::State {};
ComputeStreamScope::ComputeStreamScope(c10::Device) {}
ComputeStreamScope::~ComputeStreamScope() = default;
#endif

}  // namespace ftd::engine
