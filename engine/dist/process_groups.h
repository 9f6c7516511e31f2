// The process groups of one rank: the rendezvous (c10d TCPStore hosted by rank 0, a FileStore,
// or an in-process store for one process), then the world group (data parallelism: ZeRO
// reduce-scatter/all-gather), this rank's ep group (token all-to-all) and its expert-replica
// group (expert gradient all-reduce). NCCL for CUDA tensors, Gloo for CPU tensors.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"
#include "engine/dist/dist_env.h"
#include "engine/dist/mesh.h"

namespace ftd::engine {

enum class CommBackend { kGloo, kNccl };
const char* CommBackendName(CommBackend backend);

struct ProcessGroups {
  ParallelMesh mesh;
  CommBackend backend;
  std::chrono::milliseconds timeout;
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> ep;
  std::unique_ptr<Communicator> replicas;
  std::shared_ptr<void> store;  // keeps the rendezvous store (a c10d::Store) alive
};

// Joins the rendezvous and creates the three groups. For NCCL, the current CUDA device must be
// the rank's own (see trainer). Errors: bad layout (INVALID_ARGUMENT), a rendezvous that does
// not complete within the timeout, or a backend without support in this build (UNIMPLEMENTED).
absl::StatusOr<std::unique_ptr<ProcessGroups>> CreateProcessGroups(const DistEnv& env, int ep_size,
                                                                   int64_t num_experts, CommBackend backend);

}  // namespace ftd::engine
