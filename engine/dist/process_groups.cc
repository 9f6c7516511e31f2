#include "engine/dist/process_groups.h"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#if __has_include(<gloo/context.h>)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define FTD_HAVE_GLOO 1
#endif
#ifdef FTD_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/dist/communicator_impl.h"

namespace ftd::engine {

const char* CommBackendName(CommBackend backend) { return backend == CommBackend::kNccl ? "nccl" : "gloo"; }

namespace {

// c10d's flight recorder (on by default, 2000 entries) records every collective into a process-wide
// singleton whose per-group status map is written without its lock: ranks that share a process
// (threads in tests) crash in it, and no one here reads its traces. Off unless the operator asks
// for it (TORCH_FR_BUFFER_SIZE / TORCH_NCCL_TRACE_BUFFER_SIZE). Set while loading, before any thread
// or process group exists: setenv is not safe beside other threads' getenv.
const bool kFlightRecorderOffByDefault = [] {
  if (std::getenv("TORCH_FR_BUFFER_SIZE") == nullptr && std::getenv("TORCH_NCCL_TRACE_BUFFER_SIZE") == nullptr) {
    ::setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  }
  return true;
}();

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> Rendezvous(const DistEnv& env, std::chrono::milliseconds timeout) {
  try {
    if (!env.store_file.empty()) {
      return c10::intrusive_ptr<c10d::Store>(c10::make_intrusive<c10d::FileStore>(env.store_file, env.world_size));
    }
    if (env.world_size == 1 && env.master_addr.empty()) {
      return c10::intrusive_ptr<c10d::Store>(c10::make_intrusive<c10d::HashStore>());
    }
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(env.master_port);
    opts.isServer = env.rank == 0;
    if (opts.isServer && env.master_listen_fd >= 0) opts.masterListenFd = env.master_listen_fd;
    opts.numWorkers = env.world_size;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    return c10::intrusive_ptr<c10d::Store>(c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", env.rank, " of ", env.world_size, ": rendezvous at ",
                                               env.store_file.empty() ? absl::StrCat(env.master_addr, ":", env.master_port)
                                                                      : env.store_file,
                                               " failed: ", ExceptionMessage(e)));
  }
}

#ifdef FTD_HAVE_GLOO
std::shared_ptr<gloo::transport::Device> GlooDevice(const DistEnv& env) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname != '\0') {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  // One host (tests, a single node): loopback. Otherwise the address this host's name resolves to.
  if (env.master_addr.empty() || env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}
#endif

// One group over `ranks` (global ranks; this rank among them), its store keys under `prefix`:
// connected within `connect_timeout`, then failing collectives after `timeout`.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGroup(const std::string& name, const std::string& prefix,
                                                          const std::vector<int>& ranks, const DistEnv& env,
                                                          const c10::intrusive_ptr<c10d::Store>& store,
                                                          CommBackend backend, std::chrono::milliseconds connect_timeout,
                                                          std::chrono::milliseconds timeout) {
  auto impl = std::make_unique<Communicator::Impl>();
  impl->name = name;
  impl->size = static_cast<int>(ranks.size());
  impl->rank = static_cast<int>(std::find(ranks.begin(), ranks.end(), env.rank) - ranks.begin());
  auto group_store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  try {
    if (backend == CommBackend::kGloo) {
#ifdef FTD_HAVE_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(connect_timeout);
      opts->devices.push_back(GlooDevice(env));
      impl->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(group_store, impl->rank, impl->size, opts);
      impl->backend->setTimeout(timeout);
#else
      return absl::UnimplementedError("this build has no Gloo support (Gloo's headers were missing at build time)");
#endif
    } else {
#ifdef FTD_WITH_CUDA
      impl->device = at::Device(at::kCUDA, c10::cuda::current_device());
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      impl->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(group_store, impl->rank, impl->size, opts);
#else
      return absl::UnimplementedError("NCCL needs a CUDA build of the engine");
#endif
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", env.rank, ": creating the ", name, " group (ranks ",
                                               absl::StrJoin(ranks, ","), ") failed: ", ExceptionMessage(e)));
  }
  return std::make_unique<Communicator>(std::move(impl));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ProcessGroups>> CreateProcessGroups(const DistEnv& env, int ep_size,
                                                                   int64_t num_experts, CommBackend backend) {
  auto mesh = ParallelMesh::Create(env.world_size, env.rank, ep_size, num_experts);
  if (!mesh.ok()) return mesh.status();
  std::chrono::milliseconds timeout = env.timeout;
  if (timeout.count() == 0) timeout = backend == CommBackend::kNccl ? kDefaultNcclTimeout : kDefaultGlooTimeout;
  // The groups connect under the rendezvous timeout, then take the collective timeout.
  const std::chrono::milliseconds connect_timeout =
      env.rendezvous_timeout.count() > 0 ? env.rendezvous_timeout : timeout;
  auto store = Rendezvous(env, connect_timeout);
  if (!store.ok()) return store.status();
  auto groups = std::unique_ptr<ProcessGroups>(new ProcessGroups{*mesh, backend, timeout, nullptr, nullptr, nullptr, nullptr});
  std::vector<int> all(env.world_size);
  for (int r = 0; r < env.world_size; ++r) all[r] = r;
  auto world = CreateGroup("world", "ftd/world", all, env, *store, backend, connect_timeout, timeout);
  if (!world.ok()) return world.status();
  groups->world = std::move(*world);
  auto ep = CreateGroup("ep", absl::StrCat("ftd/ep", mesh->ep_group()), mesh->EpGroupRanks(), env, *store, backend,
                        connect_timeout, timeout);
  if (!ep.ok()) return ep.status();
  groups->ep = std::move(*ep);
  auto replicas = CreateGroup("expert-replica", absl::StrCat("ftd/replica", mesh->ep_rank()), mesh->ReplicaRanks(),
                              env, *store, backend, connect_timeout, timeout);
  if (!replicas.ok()) return replicas.status();
  groups->replicas = std::move(*replicas);
  // The store outlives the groups' use of it; held type-erased so the header stays c10d-free.
  c10::intrusive_ptr<c10d::Store> held = *store;
  groups->store = std::shared_ptr<void>(held.release(), [](void* p) {
    c10::intrusive_ptr<c10d::Store>::reclaim(static_cast<c10d::Store*>(p));
  });
  return groups;
}

}  // namespace ftd::engine
