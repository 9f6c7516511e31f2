// Checkpoints of a distributed run: one standard HF checkpoint (every tensor once, per-expert
// keys) plus each rank's resumable optimizer state, written by all ranks together and made
// visible atomically. Layout of DIR:
//   config.json; model.safetensors (ep 1: rank 0 writes everything), or
//   model-0000j-of-0000P.safetensors (ep P > 1: ep rank j-1 of the first ep group writes its
//   experts, rank 0 also the dense tensors) + model.safetensors.index.json (rank 0);
//   or, for a LoRA job, adapter_config.json + adapter_model.safetensors (rank 0) as PEFT writes them;
//   training_state/rank-0000r-of-0000W.safetensors (every rank its optimizer state), plus what
//   the caller's finalize step writes (trainer_state.json, tokenizer files).
// Every rank writes into DIR.tmp; after all have written, rank 0 renames it to DIR (moving any
// previous DIR aside first). Assumes DIR is on a filesystem all ranks share.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "engine/dist/communicator.h"
#include "engine/dist/mesh.h"
#include "engine/model/config.h"
#include "engine/model/transformer.h"
#include "engine/model/weights.h"

namespace ftd::engine {

// Collective over `world`: OK only if every rank's `local` is OK. A rank that failed gets its own
// error back; the others get an error naming the failed ranks.
absl::Status AgreeOnStatus(Communicator& world, const absl::Status& local);

// "rank-00003-of-00004.safetensors".
std::string RankStateFileName(int rank, int world_size);

struct DistCheckpointParts {
  const ModelConfig* config = nullptr;
  ModelWeights* weights = nullptr;
  const ModelOptions* options = nullptr;  // this rank's experts
  at::ScalarType dtype = at::kFloat;      // of the HF tensors
  std::vector<std::pair<std::string, at::Tensor>> rank_state;
  bool write_rank_state = true;  // false: no training_state/ (an export such as a merged checkpoint)
  // Method lora: the checkpoint is a PEFT adapter directory instead of the HF weights. Rank 0
  // writes each export's adapter_model.safetensors (every expert's adapters, gathered by the
  // caller) and adapter_config.json into DIR/<subdir> ("" first: DIR itself); no config.json or
  // model weights.
  struct AdapterExport {
    std::string subdir;
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    std::string config_json;
  };
  bool adapter = false;
  std::vector<AdapterExport> adapters;
  // The weights hold every expert on rank 0 (gathered by the caller): rank 0 writes the whole
  // checkpoint as one file, no per-ep-rank shards. Checkpoints with fused expert tensors (GPT-OSS:
  // one tensor per layer and projection) cannot be split across ep ranks' files.
  bool experts_gathered = false;
  // Run by rank 0 on the temporary directory before it is renamed into place.
  std::function<absl::Status(const std::string& tmp_dir)> finalize;
};

// Collective over `world` (every rank calls it with its own parts).
absl::Status SaveDistributedCheckpoint(const std::string& dir, const ParallelMesh& mesh, Communicator& world,
                                       DistCheckpointParts parts);

}  // namespace ftd::engine
