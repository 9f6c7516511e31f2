#include "engine/train/cuda_graph_step.h"

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#ifdef FTD_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ftd::engine {

#ifdef FTD_WITH_CUDA
struct CudaGraphStep::Graphs {
  at::cuda::CUDAGraph forward;
  at::cuda::CUDAGraph backward;
};

namespace {

// Records `body` into `graph`; on failure ends the capture so that the stream is usable again.
absl::Status Record(at::cuda::CUDAGraph& graph, at::cuda::MempoolId_t pool, const char* what,
                    const std::function<void()>& body) {
  try {
    graph.capture_begin(pool);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(absl::StrCat("cannot start capturing the ", what, ": ", e.what()));
  }
  try {
    body();
  } catch (const std::exception& e) {
    try {
      graph.capture_end();
    } catch (const std::exception&) {
      // The capture is already invalid; the error that matters is the body's.
    }
    return absl::FailedPreconditionError(absl::StrCat("capturing the ", what, " failed: ", e.what()));
  }
  try {
    graph.capture_end();
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(absl::StrCat("finishing the ", what, " graph failed: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaGraphStep>> CudaGraphStep::Capture(const ForwardFn& forward,
                                                                     const BackwardFn& backward) {
  c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  if (stream == c10::cuda::getDefaultCUDAStream(stream.device_index())) {
    return absl::FailedPreconditionError("CUDA graphs cannot be captured on the default stream");
  }
  auto graphs = std::make_unique<Graphs>();
  at::Tensor loss;
  absl::Status s = Record(graphs->forward, {0, 0}, "forward", [&] { loss = forward(); });
  if (!s.ok()) return s;
  if (!loss.defined() || loss.numel() != 1) return absl::InvalidArgumentError("the forward did not return a scalar loss");
  s = Record(graphs->backward, graphs->forward.pool(), "backward", [&] { backward(loss); });
  if (!s.ok()) return s;
  std::unique_ptr<CudaGraphStep> step(new CudaGraphStep(std::move(graphs)));
  step->loss_ = loss.detach();
  return step;
}

void CudaGraphStep::ReplayForward() { graphs_->forward.replay(); }
void CudaGraphStep::ReplayBackward() { graphs_->backward.replay(); }

#else

struct CudaGraphStep::Graphs {};

absl::StatusOr<std::unique_ptr<CudaGraphStep>> CudaGraphStep::Capture(const ForwardFn&, const BackwardFn&) {
  return absl::FailedPreconditionError("CUDA graphs need a build with CUDA (FTD_CUDA=ON)");
}

void CudaGraphStep::ReplayForward() {}
void CudaGraphStep::ReplayBackward() {}

#endif

CudaGraphStep::CudaGraphStep(std::unique_ptr<Graphs> graphs) : graphs_(std::move(graphs)) {}
CudaGraphStep::~CudaGraphStep() = default;

}  // namespace ftd::engine
