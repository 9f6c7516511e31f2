// Collectives over one process group (a c10d Gloo or NCCL backend), with failures — a dead or
// late peer, a timeout — as absl::Status errors naming the group and the operation, never a
// hang past the group's timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"

namespace ftd::engine {

enum class ReduceKind { kSum, kMax, kMin };

class Communicator {
 public:
  struct Impl;
  explicit Communicator(std::unique_ptr<Impl> impl);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  const std::string& name() const;  // e.g. "world", "ep", "expert-replica"
  int rank() const;                 // this rank's position in the group
  int size() const;
  // Where this group's tensors must live (CPU for Gloo, the rank's GPU for NCCL).
  at::Device device() const;

  // In place, on every tensor (same shapes on every rank).
  absl::Status AllReduce(std::vector<at::Tensor> tensors, ReduceKind op = ReduceKind::kSum);
  // out [n] = the sum over ranks of in[rank*n : (rank+1)*n]; in has size()*n elements.
  absl::Status ReduceScatter(at::Tensor out, at::Tensor in);
  // out [size()*n] = every rank's in [n], in rank order.
  absl::Status AllGather(at::Tensor out, at::Tensor in);
  // Rows of `in` (dim 0) in consecutive blocks of in_splits[r] go to rank r; `out` receives
  // out_splits[r] rows from rank r, in rank order. Zero-row blocks (and zero rows in all) work.
  absl::Status AllToAll(at::Tensor out, at::Tensor in, const std::vector<int64_t>& out_splits,
                        const std::vector<int64_t>& in_splits);
  absl::Status Barrier();

 private:
  std::unique_ptr<Impl> impl_;
};

// The message of an exception from c10d or ATen without its C++ backtrace.
std::string ExceptionMessage(const std::exception& e);

}  // namespace ftd::engine
