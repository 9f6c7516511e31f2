#include "engine/dist/communicator.h"

#include <exception>

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"
#include "engine/dist/communicator_impl.h"

namespace ftd::engine {

std::string ExceptionMessage(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

namespace {

// Runs one collective to completion; a c10d exception (peer gone, timeout) becomes UNAVAILABLE.
template <typename Launch>
absl::Status Run(const Communicator::Impl& g, const char* op, Launch&& launch) {
  try {
    c10::intrusive_ptr<c10d::Work> work = launch(*g.backend);
    work->wait();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("collective ", op, " on the ", g.name, " group (rank ", g.rank,
                                               " of ", g.size, ") failed: ", ExceptionMessage(e)));
  }
}

c10d::ReduceOp ToC10d(ReduceKind op) {
  switch (op) {
    case ReduceKind::kMax: return c10d::ReduceOp::MAX;
    case ReduceKind::kMin: return c10d::ReduceOp::MIN;
    default: return c10d::ReduceOp::SUM;
  }
}

}  // namespace

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Communicator::~Communicator() = default;

const std::string& Communicator::name() const { return impl_->name; }
int Communicator::rank() const { return impl_->rank; }
int Communicator::size() const { return impl_->size; }
at::Device Communicator::device() const { return impl_->device; }

absl::Status Communicator::AllReduce(std::vector<at::Tensor> tensors, ReduceKind op) {
  c10d::AllreduceOptions opts;
  opts.reduceOp = ToC10d(op);
  for (at::Tensor& t : tensors) {
    std::vector<at::Tensor> one = {t};
    if (auto s = Run(*impl_, "all_reduce", [&](c10d::Backend& b) { return b.allreduce(one, opts); }); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Communicator::ReduceScatter(at::Tensor out, at::Tensor in) {
  if (in.numel() != out.numel() * impl_->size) {
    return absl::InvalidArgumentError(absl::StrCat("reduce_scatter on ", impl_->name, ": input has ", in.numel(),
                                                   " elements, expected ", out.numel() * impl_->size));
  }
  return Run(*impl_, "reduce_scatter", [&](c10d::Backend& b) { return b._reduce_scatter_base(out, in); });
}

absl::Status Communicator::AllGather(at::Tensor out, at::Tensor in) {
  if (out.numel() != in.numel() * impl_->size) {
    return absl::InvalidArgumentError(absl::StrCat("all_gather on ", impl_->name, ": output has ", out.numel(),
                                                   " elements, expected ", in.numel() * impl_->size));
  }
  return Run(*impl_, "all_gather", [&](c10d::Backend& b) { return b._allgather_base(out, in); });
}

absl::Status Communicator::AllToAll(at::Tensor out, at::Tensor in, const std::vector<int64_t>& out_splits,
                                    const std::vector<int64_t>& in_splits) {
  std::vector<int64_t> out_s = out_splits, in_s = in_splits;
  return Run(*impl_, "all_to_all", [&](c10d::Backend& b) { return b.alltoall_base(out, in, out_s, in_s); });
}

absl::Status Communicator::Barrier() {
  return Run(*impl_, "barrier", [&](c10d::Backend& b) { return b.barrier(); });
}

}  // namespace ftd::engine
