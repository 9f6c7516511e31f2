#include "engine/model/hf_checkpoint.h"

#include <filesystem>
#include <system_error>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"

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

// Visits every non-expert tensor of the model with its HF name.
template <typename Fn>
void ForEachDenseTensor(ModelWeights& w, const ModelConfig& c, Fn&& fn) {
  fn("model.embed_tokens.weight", w.embed, std::vector<int64_t>{c.vocab_size, c.hidden_size});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers[l];
    std::string p = absl::StrCat("model.layers.", l, ".");
    const int64_t H = c.hidden_size;
    fn(p + "input_layernorm.weight", L.input_norm, std::vector<int64_t>{H});
    fn(p + "post_attention_layernorm.weight", L.post_attn_norm, std::vector<int64_t>{H});
    fn(p + "self_attn.q_proj.weight", L.attn.q_proj, std::vector<int64_t>{c.q_dim(), H});
    fn(p + "self_attn.k_proj.weight", L.attn.k_proj, std::vector<int64_t>{c.kv_dim(), H});
    fn(p + "self_attn.v_proj.weight", L.attn.v_proj, std::vector<int64_t>{c.kv_dim(), H});
    fn(p + "self_attn.o_proj.weight", L.attn.o_proj, std::vector<int64_t>{H, c.q_dim()});
    if (c.attention_bias) {
      fn(p + "self_attn.q_proj.bias", L.attn.q_bias, std::vector<int64_t>{c.q_dim()});
      fn(p + "self_attn.k_proj.bias", L.attn.k_bias, std::vector<int64_t>{c.kv_dim()});
      fn(p + "self_attn.v_proj.bias", L.attn.v_bias, std::vector<int64_t>{c.kv_dim()});
      fn(p + "self_attn.o_proj.bias", L.attn.o_bias, std::vector<int64_t>{H});
    }
    if (c.qk_norm) {
      fn(p + "self_attn.q_norm.weight", L.attn.q_norm, std::vector<int64_t>{c.head_dim});
      fn(p + "self_attn.k_norm.weight", L.attn.k_norm, std::vector<int64_t>{c.head_dim});
    }
    if (L.is_moe) {
      fn(p + "mlp.gate.weight", L.moe.router, std::vector<int64_t>{c.num_experts, H});
    } else {
      const int64_t F = c.intermediate_size;
      fn(p + "mlp.gate_proj.weight", L.mlp.gate_proj, std::vector<int64_t>{F, H});
      fn(p + "mlp.up_proj.weight", L.mlp.up_proj, std::vector<int64_t>{F, H});
      fn(p + "mlp.down_proj.weight", L.mlp.down_proj, std::vector<int64_t>{H, F});
    }
  }
  fn("model.norm.weight", w.norm, std::vector<int64_t>{c.hidden_size});
}

ModelWeights EmptyWeights(const ModelConfig& c) {
  ModelWeights w;
  w.layers.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) w.layers[l].is_moe = c.IsMoeLayer(l);
  w.tied = c.tie_word_embeddings;
  return w;
}

std::string ExpertKey(int64_t layer, int64_t expert, const char* proj) {
  return absl::StrCat("model.layers.", layer, ".mlp.experts.", expert, ".", proj, ".weight");
}

}  // namespace

absl::StatusOr<ModelWeights> LoadHfWeights(const std::string& model_dir, const ModelConfig& c,
                                           const ModelOptions& o) {
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsReader> reader, SafetensorsReader::Open(model_dir));
  ModelWeights w = EmptyWeights(c);
  auto to_model = at::TensorOptions().dtype(o.dtype).device(o.device);
  absl::Status status;
  ForEachDenseTensor(w, c, [&](const std::string& name, at::Tensor& t, std::vector<int64_t> shape) {
    if (!status.ok()) return;
    auto loaded = reader->Load(name, shape);
    if (!loaded.ok()) {
      status = loaded.status();
      return;
    }
    t = loaded->to(to_model);
  });
  FTD_RETURN_IF_ERROR(status);
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    FTD_ASSIGN_OR_RETURN(at::Tensor head, reader->Load("lm_head.weight", std::vector<int64_t>{c.vocab_size, c.hidden_size}));
    w.lm_head = head.to(to_model);
  }
  const int64_t E = LocalExperts(c, o), H = c.hidden_size, F = c.moe_intermediate_size;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers[l];
    if (!L.is_moe) continue;
    L.moe.gate_up = at::empty({E, H, 2 * F}, to_model);
    L.moe.down = at::empty({E, F, H}, to_model);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t global = o.expert_begin + e;
      FTD_ASSIGN_OR_RETURN(at::Tensor gate, reader->Load(ExpertKey(l, global, "gate_proj"), std::vector<int64_t>{F, H}));
      FTD_ASSIGN_OR_RETURN(at::Tensor up, reader->Load(ExpertKey(l, global, "up_proj"), std::vector<int64_t>{F, H}));
      FTD_ASSIGN_OR_RETURN(at::Tensor down, reader->Load(ExpertKey(l, global, "down_proj"), std::vector<int64_t>{H, F}));
      L.moe.gate_up[e].narrow(1, 0, F).copy_(gate.t());
      L.moe.gate_up[e].narrow(1, F, F).copy_(up.t());
      L.moe.down[e].copy_(down.t());
    }
  }
  return w;
}

ModelWeights InitRandomWeights(const ModelConfig& c, const ModelOptions& o, uint64_t seed) {
  ModelWeights w = EmptyWeights(c);
  auto to_model = at::TensorOptions().dtype(o.dtype).device(o.device);
  const double std = c.initializer_range;
  // Each tensor draws from its own generator seeded by (seed, tensor ordinal), so a tensor's
  // values depend neither on the others nor on how experts are sharded.
  uint64_t ordinal = 0;
  auto normal = [&](std::vector<int64_t> shape) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ull + (ordinal++));
    return at::normal(0.0, std, shape, gen, at::TensorOptions().dtype(at::kFloat)).to(to_model);
  };
  ForEachDenseTensor(w, c, [&](const std::string& name, at::Tensor& t, std::vector<int64_t> shape) {
    bool is_norm = name.find("norm.weight") != std::string::npos;
    bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_norm) {
      t = at::ones(shape, to_model);
    } else if (is_bias) {
      t = at::zeros(shape, to_model);
    } else {
      t = normal(shape);
    }
  });
  w.lm_head = c.tie_word_embeddings ? w.embed : normal({c.vocab_size, c.hidden_size});
  const int64_t E = LocalExperts(c, o), H = c.hidden_size, F = c.moe_intermediate_size;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers[l];
    if (!L.is_moe) continue;
    std::vector<at::Tensor> gate_up, down;
    const uint64_t base = ordinal;
    for (int64_t e = 0; e < E; ++e) {
      ordinal = base + 2 * static_cast<uint64_t>(o.expert_begin + e);
      gate_up.push_back(normal({H, 2 * F}));
      down.push_back(normal({F, H}));
    }
    ordinal = base + 2 * static_cast<uint64_t>(c.num_experts);
    L.moe.gate_up = at::stack(gate_up);
    L.moe.down = at::stack(down);
  }
  return w;
}

void EnableGradients(ModelWeights& w) {
  for (NamedParam& p : ListParameters(w)) p.tensor->set_requires_grad(true);
  if (w.tied) w.lm_head = w.embed;
}

std::vector<std::pair<std::string, at::Tensor>> ToHfTensors(ModelWeights& w, const ModelConfig& c,
                                                            const ModelOptions& o, at::ScalarType dtype) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto cpu = [dtype](const at::Tensor& t) { return t.detach().to(at::kCPU, dtype).contiguous(); };
  ForEachDenseTensor(w, c, [&](const std::string& name, at::Tensor& t, const std::vector<int64_t>&) {
    out.emplace_back(name, cpu(t));
  });
  if (!c.tie_word_embeddings) out.emplace_back("lm_head.weight", cpu(w.lm_head));
  const int64_t E = LocalExperts(c, o), F = c.moe_intermediate_size;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers[l];
    if (!L.is_moe) continue;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t global = o.expert_begin + e;
      at::Tensor gu = L.moe.gate_up.detach()[e];
      out.emplace_back(ExpertKey(l, global, "gate_proj"), cpu(gu.narrow(1, 0, F).t()));
      out.emplace_back(ExpertKey(l, global, "up_proj"), cpu(gu.narrow(1, F, F).t()));
      out.emplace_back(ExpertKey(l, global, "down_proj"), cpu(L.moe.down.detach()[e].t()));
    }
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
  FTD_RETURN_IF_ERROR(SaveSafetensors(tmp.string(), ToHfTensors(weights, config, options, dtype), write_options));
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
  return FsyncDirectory(target.parent_path().empty() ? "." : target.parent_path().string());
}

}  // namespace ftd::engine
