#include "engine/model/hf_checkpoint.h"

#include <cctype>
#include <cmath>
#include <filesystem>
#include <system_error>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/model/gate_up_columns.h"
#include "engine/model/mxfp4.h"

namespace ftd::engine {
namespace fs = std::filesystem;

at::ScalarType DtypeFromName(const std::string& name) {
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") return at::kHalf;
  return at::kFloat;
}

std::string DtypeName(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return "float32";
  }
}

namespace {

int64_t LocalExperts(const ModelConfig& c, const ModelOptions& o) {
  return o.expert_count < 0 ? c.num_experts : o.expert_count;
}

// The engine dtype of a layout entry: buffers stay fp32 whatever the parameters' dtype.
at::TensorOptions TensorOptionsFor(const TensorSpec& spec, const ModelOptions& o) {
  return at::TensorOptions().dtype(spec.role == TensorRole::kBuffer ? at::kFloat : o.dtype).device(o.device);
}

// Layer index of "model.layers.<i>.<...>", or -1.
int64_t LayerOfName(const std::string& name) {
  static const std::string kPrefix = "model.layers.";
  if (name.compare(0, kPrefix.size(), kPrefix) != 0) return -1;
  int64_t layer = 0;
  size_t i = kPrefix.size();
  if (i >= name.size() || !std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i) layer = layer * 10 + (name[i] - '0');
  return i < name.size() && name[i] == '.' ? layer : -1;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadHfWeights(const std::string& model_dir, const ModelConfig& c,
                                           const ModelOptions& o) {
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsReader> reader, SafetensorsReader::Open(model_dir));
  ModelWeights w = EmptyWeights(c);
  const int64_t E = LocalExperts(c, o);
  for (const TensorSpec& spec : w.layout) {
    at::Tensor& t = SlotTensor(w, spec);
    const auto to_model = TensorOptionsFor(spec, o);
    if (!spec.expert) {
      FTD_ASSIGN_OR_RETURN(at::Tensor loaded, reader->Load(spec.name, spec.shape));
      t = loaded.to(to_model);
      continue;
    }
    if (spec.expert_names == ExpertNames::kFusedInterleaved) {
      // One tensor of all experts (x @ W already): this rank's slice, gate/up de-interleaved.
      // Hub checkpoints store the expert weights in MXFP4 (<name>_blocks, <name>_scales):
      // dequantised here (to the model's dtype below).
      at::Tensor all;
      if (!reader->Has(spec.name) && reader->Has(spec.name + "_blocks")) {
        const int64_t K = spec.shape[1], N = spec.shape[2];
        FTD_ASSIGN_OR_RETURN(at::Tensor blocks,
                             reader->Load(spec.name + "_blocks", std::vector<int64_t>{spec.shape[0], N, K / 32, 16}));
        FTD_ASSIGN_OR_RETURN(at::Tensor scales,
                             reader->Load(spec.name + "_scales", std::vector<int64_t>{spec.shape[0], N, K / 32}));
        if (blocks.scalar_type() != at::kByte || scales.scalar_type() != at::kByte) {
          return absl::InvalidArgumentError(absl::StrCat(spec.name, "_blocks/_scales: MXFP4 tensors must be U8"));
        }
        blocks = blocks.narrow(0, o.expert_begin, E);
        scales = scales.narrow(0, o.expert_begin, E);
        t = DequantizeMxfp4(blocks, scales);
        t = (HasInterleavedGateUp(spec) ? DeinterleaveGateUp(t) : t).to(to_model).contiguous();
        continue;
      }
      FTD_ASSIGN_OR_RETURN(all, reader->Load(spec.name, spec.shape));
      at::Tensor mine = all.narrow(0, o.expert_begin, E);
      t = (HasInterleavedGateUp(spec) ? DeinterleaveGateUp(mine) : mine).to(to_model).contiguous();
      continue;
    }
    // Fused experts from per-expert keys: gate_up [E, H, 2F] = [gate^T | up^T], down = down^T.
    const bool gate_up = spec.slot == Slot::kExpertsGateUp;
    const int64_t rows = spec.shape[1], cols = spec.shape[2];  // gate_up: H, 2F; down: F, H
    t = at::empty({E, rows, cols}, to_model);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t global = o.expert_begin + e;
      if (gate_up && spec.expert_names == ExpertNames::kUpDown) {  // no gate: up^T alone [K, F]
        FTD_ASSIGN_OR_RETURN(at::Tensor up, reader->Load(ExpertTensorName(spec, global, "up_proj"),
                                                         std::vector<int64_t>{cols, rows}));
        t[e].copy_(up.t());
      } else if (gate_up) {
        const int64_t F = cols / 2;
        FTD_ASSIGN_OR_RETURN(at::Tensor gate, reader->Load(ExpertTensorName(spec, global, "gate_proj"),
                                                           std::vector<int64_t>{F, rows}));
        FTD_ASSIGN_OR_RETURN(at::Tensor up, reader->Load(ExpertTensorName(spec, global, "up_proj"),
                                                         std::vector<int64_t>{F, rows}));
        t[e].narrow(1, 0, F).copy_(gate.t());
        t[e].narrow(1, F, F).copy_(up.t());
      } else {
        FTD_ASSIGN_OR_RETURN(at::Tensor down, reader->Load(ExpertTensorName(spec, global, "down_proj"),
                                                           std::vector<int64_t>{cols, rows}));
        t[e].copy_(down.t());
      }
    }
  }
  if (c.tie_word_embeddings) w.lm_head = w.embed;
  // MTP layers: stored after the decoder's layers, written back unchanged by a save.
  if (c.num_nextn_predict_layers > 0) {
    w.carried.source_dir = model_dir;
    for (const std::string& name : reader->Keys()) {
      const int64_t layer = LayerOfName(name);
      // Nemotron-H keeps its MTP layers under mtp.* instead.
      const bool mtp = c.IsHybrid() && name.compare(0, 4, "mtp.") == 0;
      if (mtp || (layer >= c.num_hidden_layers && layer < c.num_hidden_layers + c.num_nextn_predict_layers)) {
        w.carried.names.push_back(name);
      }
    }
  }
  return w;
}

ModelWeights InitRandomWeights(const ModelConfig& c, const ModelOptions& o, uint64_t seed) {
  ModelWeights w = EmptyWeights(c);
  const double std = c.initializer_range;
  // Each tensor draws from its own generator seeded by (seed, tensor ordinal), so a tensor's
  // values depend neither on the others nor on how experts are sharded. Ordinals: the dense
  // tensors in layout order, then lm_head, then per MoE layer 2 per expert (gate_up, down).
  uint64_t ordinal = 0;
  auto normal = [&](std::vector<int64_t> shape, const at::TensorOptions& to_model) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ull + (ordinal++));
    return at::normal(0.0, std, shape, gen, at::TensorOptions().dtype(at::kFloat)).to(to_model);
  };
  auto init_dense = [&](const TensorSpec& spec) {
    at::Tensor& t = SlotTensor(w, spec);
    const auto to_model = TensorOptionsFor(spec, o);
    switch (spec.role) {
      case TensorRole::kNorm: t = at::ones(spec.shape, to_model); break;
      case TensorRole::kBias:
      case TensorRole::kBuffer: t = at::zeros(spec.shape, to_model); break;
      case TensorRole::kWeight: t = normal(spec.shape, to_model); break;
    }
  };
  const int64_t E_local = LocalExperts(c, o);
  for (const TensorSpec& spec : w.layout) {
    if (!spec.expert && spec.slot != Slot::kLmHead) init_dense(spec);
    if (spec.expert && spec.role == TensorRole::kBias) {  // GPT-OSS's expert biases: zeros, as HF
      std::vector<int64_t> shape = spec.shape;
      shape[0] = E_local;
      SlotTensor(w, spec) = at::zeros(shape, TensorOptionsFor(spec, o));
    }
  }
  for (const TensorSpec& spec : w.layout) {
    if (spec.slot == Slot::kLmHead) init_dense(spec);
  }
  // Mamba2 (HF's _init_weights): A_log = log(1..nh); dt_bias = softplus^-1(dt) for dt
  // log-uniform in [time_step_min, time_step_max], at least time_step_floor.
  for (const TensorSpec& spec : w.layout) {
    if (spec.slot == Slot::kMambaALog) {
      SlotTensor(w, spec) = at::arange(1, spec.shape[0] + 1, at::kFloat).log().to(TensorOptionsFor(spec, o));
    } else if (spec.slot == Slot::kMambaDtBias) {
      const MambaConfig& m = c.mamba;
      auto gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ull + (ordinal++));
      at::Tensor u = at::rand(spec.shape, gen, at::TensorOptions().dtype(at::kFloat));
      at::Tensor dt = (u * (std::log(m.time_step_max) - std::log(m.time_step_min)) + std::log(m.time_step_min))
                          .exp()
                          .clamp_min(m.time_step_floor);
      SlotTensor(w, spec) = (dt + at::log(-at::expm1(-dt))).to(TensorOptionsFor(spec, o));
    }
  }
  if (c.tie_word_embeddings) w.lm_head = w.embed;
  const int64_t E = LocalExperts(c, o);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const TensorSpec* gate_up = nullptr;
    const TensorSpec* down = nullptr;
    for (const TensorSpec& spec : w.layout) {
      if (spec.layer != l) continue;
      if (spec.slot == Slot::kExpertsGateUp) gate_up = &spec;
      if (spec.slot == Slot::kExpertsDown) down = &spec;
    }
    if (gate_up == nullptr || down == nullptr) continue;
    const auto to_model = TensorOptionsFor(*gate_up, o);
    std::vector<at::Tensor> gu, dn;
    const uint64_t base = ordinal;
    for (int64_t e = 0; e < E; ++e) {
      ordinal = base + 2 * static_cast<uint64_t>(o.expert_begin + e);
      gu.push_back(normal({gate_up->shape[1], gate_up->shape[2]}, to_model));
      dn.push_back(normal({down->shape[1], down->shape[2]}, to_model));
    }
    ordinal = base + 2 * static_cast<uint64_t>(c.num_experts);
    SlotTensor(w, *gate_up) = at::stack(gu);
    SlotTensor(w, *down) = at::stack(dn);
  }
  return w;
}

void EnableGradients(ModelWeights& w) {
  for (NamedParam& p : ListParameters(w)) p.tensor->set_requires_grad(true);
  if (w.tied) w.lm_head = w.embed;
}

std::vector<std::pair<std::string, at::Tensor>> ToHfTensors(ModelWeights& w, const ModelConfig& c,
                                                            const ModelOptions& o, at::ScalarType dtype,
                                                            TensorSelection which) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto cpu = [dtype](const at::Tensor& t) { return t.detach().to(at::kCPU, dtype).contiguous(); };
  const int64_t E = LocalExperts(c, o);
  for (const TensorSpec& spec : w.layout) {
    if ((which == TensorSelection::kExperts && !spec.expert) || (which == TensorSelection::kDense && spec.expert)) {
      continue;
    }
    at::Tensor& t = SlotTensor(w, spec);
    if (spec.role == TensorRole::kBuffer && !t.defined()) continue;  // e.g. a gradient set
    if (!spec.expert) {
      out.emplace_back(spec.name, cpu(t));
      continue;
    }
    if (spec.expert_names == ExpertNames::kFusedInterleaved) {
      // One tensor under one name: a rank holding a slice cannot write it alone.
      TORCH_CHECK(E == c.num_experts, spec.name,
                  ": a fused-expert checkpoint (gpt_oss) is written only by a rank holding every expert "
                  "(expert parallelism saves are not implemented for it)");
      out.emplace_back(spec.name, cpu(HasInterleavedGateUp(spec) ? InterleaveGateUp(t.detach()) : t.detach()));
      continue;
    }
    for (int64_t e = 0; e < E; ++e) {
      const int64_t global = o.expert_begin + e;
      at::Tensor fused = t.detach()[e];
      if (spec.slot == Slot::kExpertsGateUp && spec.expert_names == ExpertNames::kUpDown) {
        out.emplace_back(ExpertTensorName(spec, global, "up_proj"), cpu(fused.t()));
      } else if (spec.slot == Slot::kExpertsGateUp) {
        const int64_t F = fused.size(1) / 2;
        out.emplace_back(ExpertTensorName(spec, global, "gate_proj"), cpu(fused.narrow(1, 0, F).t()));
        out.emplace_back(ExpertTensorName(spec, global, "up_proj"), cpu(fused.narrow(1, F, F).t()));
      } else {
        out.emplace_back(ExpertTensorName(spec, global, "down_proj"), cpu(fused.t()));
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, at::Tensor>>> CarriedHfTensors(const ModelWeights& w) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (w.carried.names.empty()) return out;
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsReader> reader, SafetensorsReader::Open(w.carried.source_dir));
  for (const std::string& name : w.carried.names) {
    FTD_ASSIGN_OR_RETURN(at::Tensor t, reader->Load(name));  // as stored: dtype and bytes unchanged
    out.emplace_back(name, std::move(t));
  }
  return out;
}

absl::Status SaveHfCheckpoint(const std::string& dir, const ModelConfig& config, ModelWeights& weights,
                              const ModelOptions& options, at::ScalarType dtype, uint64_t max_shard_bytes) {
  fs::path target(dir);
  fs::path tmp = target;
  tmp += absl::StrCat(".tmp-", ::getpid());
  std::error_code ec;
  FTD_RETURN_IF_ERROR(RemoveTree(tmp.string()));
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  ModelConfig saved = config;
  saved.dtype = DtypeName(dtype);
  FTD_RETURN_IF_ERROR(WriteFileAtomically((tmp / "config.json").string(), ModelConfigToJson(saved)));
  SafetensorsWriteOptions write_options;
  write_options.max_shard_bytes = max_shard_bytes;
  std::vector<std::pair<std::string, at::Tensor>> tensors = ToHfTensors(weights, config, options, dtype);
  FTD_ASSIGN_OR_RETURN(auto carried, CarriedHfTensors(weights));
  for (auto& named : carried) tensors.push_back(std::move(named));
  FTD_RETURN_IF_ERROR(SaveSafetensors(tmp.string(), tensors, write_options));
  FTD_RETURN_IF_ERROR(FsyncDirectory(tmp.string()));
  if (fs::exists(target)) {
    fs::path old = target;
    old += absl::StrCat(".old-", ::getpid());
    fs::rename(target, old, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot move aside ", dir, ": ", ec.message()));
    fs::rename(tmp, target, ec);
    FTD_RETURN_IF_ERROR(RemoveTree(old.string()));
  } else {
    fs::rename(tmp, target, ec);
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), " to ", dir, ": ", ec.message()));
  // Later saves copy the carried tensors from here: the source may be deleted (keep_last).
  if (!weights.carried.names.empty()) weights.carried.source_dir = dir;
  return FsyncDirectory(target.parent_path().empty() ? "." : target.parent_path().string());
}

}  // namespace ftd::engine
