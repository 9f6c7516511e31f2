#include "engine/model/lora.h"

#include <cmath>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/model/gate_up_columns.h"
#include "engine/model/transformer.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace {

constexpr const char* kPeftPrefix = "base_model.model.";

std::string ModuleOf(const std::string& weight_name) {
  return absl::EndsWith(weight_name, ".weight") ? weight_name.substr(0, weight_name.size() - 7) : weight_name;
}

// The transformers v5 module (PEFT's key path) of a checkpoint weight: Nemotron-H's checkpoint
// says backbone.*, its model in memory model.* (and so do PEFT's keys).
std::string TransformersModuleOf(const std::string& weight_name) {
  std::string module = ModuleOf(weight_name);
  if (absl::StartsWith(module, "backbone.")) module = absl::StrCat("model.", module.substr(9));
  return module;
}

bool IsGateUpSite(const LoraSite& site) { return site.spec->slot == Slot::kExpertsGateUp; }

int64_t LocalExperts(const ModelConfig& c, const ModelOptions& o) {
  return o.expert_count < 0 ? c.num_experts : o.expert_count;
}

// PEFT nests one ParamWrapper per targeted parameter of mlp.experts, gate_up_proj innermost
// (registered first): with both adapted its tensors sit under base_layer.
std::string PeftKey(const LoraSite& site, bool experts_both, const char* ab) {
  std::string module = site.module;
  if (site.experts != nullptr && experts_both && IsGateUpSite(site)) {
    module += ".base_layer";
  }
  return absl::StrCat(kPeftPrefix, module, ".", ab, ".weight");
}

// Layers whose experts carry adapters on both gate_up and down.
std::set<int64_t> LayersWithBothExpertAdapters(const std::vector<LoraSite>& sites) {
  std::map<int64_t, int> n;
  for (const LoraSite& s : sites) {
    if (s.experts != nullptr && s.experts->defined()) ++n[s.layer];
  }
  std::set<int64_t> out;
  for (auto [layer, count] : n) {
    if (count == 2) out.insert(layer);
  }
  return out;
}

// Engine expert layout <-> PEFT's: a [E, in, r] <-> lora_A [E*r, in] (rows expert-major);
// b [E, r, out] <-> lora_B [out, r*E] (column ri*E + e).
at::Tensor ExpertAToPeft(const at::Tensor& a) { return a.transpose(1, 2).reshape({-1, a.size(1)}); }
at::Tensor ExpertBToPeft(const at::Tensor& b) { return b.permute({2, 1, 0}).reshape({b.size(2), -1}); }
at::Tensor ExpertAFromPeft(const at::Tensor& A, int64_t E) {
  return A.view({E, -1, A.size(1)}).transpose(1, 2).contiguous();
}
at::Tensor ExpertBFromPeft(const at::Tensor& B, int64_t E) {
  return B.view({B.size(0), -1, E}).permute({2, 1, 0}).contiguous();
}

// b's output columns follow its base weight's: GPT-OSS's gate_up is interleaved (gate at even,
// up at odd columns) in HF and so in PEFT's lora_B, [gate | up] in the engine.
at::Tensor ExpertBColumnsToHf(const LoraSite& site, const at::Tensor& b) {
  return HasInterleavedGateUp(*site.spec) ? InterleaveGateUp(b) : b;
}
at::Tensor ExpertBColumnsFromHf(const LoraSite& site, const at::Tensor& b) {
  return HasInterleavedGateUp(*site.spec) ? DeinterleaveGateUp(b) : b;
}

std::string AdapterConfigJson(const LoraOptions& o, const std::string& base_model,
                              const std::vector<std::string>& target_modules,
                              const std::vector<std::string>& target_parameters) {
  nlohmann::json j = {{"peft_type", "LORA"},
                      {"task_type", "CAUSAL_LM"},
                      {"base_model_name_or_path", base_model},
                      {"r", o.rank},
                      {"lora_alpha", o.alpha},
                      {"lora_dropout", 0.0},
                      {"use_rslora", o.use_rslora},
                      {"target_modules", target_modules},
                      {"target_parameters", target_parameters.empty() ? nlohmann::json(nullptr)
                                                                      : nlohmann::json(target_parameters)},
                      {"bias", "none"},
                      {"fan_in_fan_out", false},
                      {"init_lora_weights", true},
                      {"inference_mode", true},
                      {"modules_to_save", nullptr},
                      {"rank_pattern", nlohmann::json::object()},
                      {"alpha_pattern", nlohmann::json::object()},
                      {"use_dora", false},
                      {"lora_bias", false},
                      {"layers_to_transform", nullptr},
                      {"layers_pattern", nullptr},
                      {"revision", nullptr}};
  return j.dump(2);
}

}  // namespace

bool HasPerExpertAdapterLayout(const TensorSpec& experts) {
  return experts.expert_names == ExpertNames::kGateUpDown || experts.expert_names == ExpertNames::kW1W3W2;
}

double LoraOptions::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

std::vector<LoraSite> LoraSites(ModelWeights& w) {
  std::vector<LoraSite> out;
  for (const TensorSpec& spec : w.layout) {
    if (spec.layer < 0) continue;
    LayerWeights& L = w.layers.at(static_cast<size_t>(spec.layer));
    LoraSite site;
    site.layer = spec.layer;
    site.module = TransformersModuleOf(spec.name);
    site.spec = &spec;
    site.base = &SlotTensor(w, spec);
    site.base_shape = spec.shape;
    auto linear = [&](LoraTarget target, LoraLinear* l) {
      site.target = target;
      site.linear = l;
    };
    switch (spec.slot) {
      case Slot::kQProj: linear(kLoraAttention, &L.attn.q_lora); break;
      case Slot::kKProj: linear(kLoraAttention, &L.attn.k_lora); break;
      case Slot::kVProj: linear(kLoraAttention, &L.attn.v_lora); break;
      case Slot::kOProj: linear(kLoraAttention, &L.attn.o_lora); break;
      case Slot::kQaProj: linear(kLoraAttention, &L.attn.q_a_lora); break;
      case Slot::kQbProj: linear(kLoraAttention, &L.attn.q_b_lora); break;
      case Slot::kKvaProj: linear(kLoraAttention, &L.attn.kv_a_lora); break;
      case Slot::kKvbProj: linear(kLoraAttention, &L.attn.kv_b_lora); break;
      case Slot::kMlpGate: linear(kLoraMlp, &L.mlp.gate_lora); break;
      case Slot::kMlpUp: linear(kLoraMlp, &L.mlp.up_lora); break;
      case Slot::kMlpDown: linear(kLoraMlp, &L.mlp.down_lora); break;
      case Slot::kSharedGate: linear(kLoraSharedExperts, &L.moe.shared.gate_lora); break;
      case Slot::kSharedUp: linear(kLoraSharedExperts, &L.moe.shared.up_lora); break;
      case Slot::kSharedDown: linear(kLoraSharedExperts, &L.moe.shared.down_lora); break;
      case Slot::kLatentDown: linear(kLoraExperts, &L.moe.latent_down_lora); break;
      case Slot::kLatentUp: linear(kLoraExperts, &L.moe.latent_up_lora); break;
      case Slot::kExpertsGateUp:
      case Slot::kExpertsDown: {
        const bool gate_up = spec.slot == Slot::kExpertsGateUp;
        site.target = kLoraExperts;
        site.experts = gate_up ? &L.moe.gate_up_lora : &L.moe.down_lora;
        // Relu^2 experts (Nemotron-H) have no gate: their v5 parameter is up_proj.
        const bool up_only = spec.expert_names == ExpertNames::kUpDown;
        site.expert_param = gate_up ? (up_only ? "up_proj" : "gate_up_proj") : "down_proj";
        // Every family's transformers v5 module: mlp.experts (Mixtral's checkpoint says
        // block_sparse_moe), Nemotron-H's mixer.experts.
        site.module = absl::StrCat("model.layers.", spec.layer, up_only ? ".mixer.experts" : ".mlp.experts");
        break;
      }
      default: continue;
    }
    out.push_back(std::move(site));
  }
  return out;
}

absl::Status AddLoraAdapters(ModelWeights& w, const ModelConfig& c, const ModelOptions& mo, const LoraOptions& o,
                             uint64_t seed) {
  if (o.rank < 1) return absl::InvalidArgumentError(absl::StrCat("lora.rank must be positive (got ", o.rank, ")"));
  FTD_RETURN_IF_ERROR(CheckLoraTargets(c, o.targets, "lora.targets"));
  c10::NoGradGuard no_grad;
  for (NamedParam& p : ListParameters(w)) p.tensor->set_requires_grad(false);  // the base, frozen
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const double scale = o.scale();
  const int64_t r = o.rank;
  const int64_t E_local = LocalExperts(c, mo);
  auto opts = at::TensorOptions().dtype(mo.dtype).device(mo.device);
  for (LoraSite& site : LoraSites(w)) {
    if (!(o.targets & site.target)) continue;
    if (site.linear != nullptr) {
      const int64_t out = site.base_shape[0], in = site.base_shape[1];
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));  // kaiming_uniform(a = sqrt(5))
      at::Tensor a = at::empty({r, in}, at::kFloat).uniform_(-bound, bound, gen);
      *site.linear = {a.to(opts).requires_grad_(true), at::zeros({out, r}, opts).requires_grad_(true), scale};
    } else {
      // All experts' A drawn in expert order, this rank's slice kept: the same values at any ep.
      const int64_t E = site.base_shape[0], in = site.base_shape[1], out = site.base_shape[2];
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      at::Tensor a_all = at::empty({E, r, in}, at::kFloat).uniform_(-bound, bound, gen);  // PEFT's row order
      at::Tensor a = a_all.narrow(0, mo.expert_begin, E_local).transpose(1, 2).contiguous();
      *site.experts = {a.to(opts).requires_grad_(true), at::zeros({E_local, r, out}, opts).requires_grad_(true),
                       scale};
    }
  }
  w.lora = true;
  return absl::OkStatus();
}

at::Tensor LinearWithLora(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const LoraLinear& lora) {
  at::Tensor y = at::linear(x, w, bias);
  if (!lora.defined()) return y;
  return y + at::linear(at::linear(x, lora.a), lora.b) * lora.scale;
}

std::vector<std::pair<std::string, at::Tensor>> PeftAdapterTensors(ModelWeights& w, const ExpertGather& full_experts,
                                                                   bool grads) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::vector<LoraSite> sites = LoraSites(w);
  const std::set<int64_t> both = LayersWithBothExpertAdapters(sites);
  auto value = [grads](const at::Tensor& t) {
    at::Tensor v = grads ? (t.grad().defined() ? t.grad() : at::zeros_like(t)) : t;
    return v.detach();
  };
  for (const LoraSite& site : sites) {
    if (site.linear != nullptr && site.linear->defined()) {
      out.emplace_back(PeftKey(site, false, "lora_A"), value(site.linear->a));
      out.emplace_back(PeftKey(site, false, "lora_B"), value(site.linear->b));
    } else if (site.experts != nullptr && site.experts->defined()) {
      const bool b2 = both.count(site.layer) > 0;
      out.emplace_back(PeftKey(site, b2, "lora_A"), ExpertAToPeft(full_experts(value(site.experts->a))));
      out.emplace_back(PeftKey(site, b2, "lora_B"),
                       ExpertBToPeft(ExpertBColumnsToHf(site, full_experts(value(site.experts->b)))));
    }
  }
  return out;
}

std::string PeftAdapterConfigJson(ModelWeights& w, const LoraOptions& o, const std::string& base_model) {
  std::set<std::string> modules;
  std::vector<std::string> params;
  std::set<std::string> expert_params;
  for (const LoraSite& site : LoraSites(w)) {
    if (site.linear != nullptr && site.linear->defined()) {
      if (site.target == kLoraAttention) {
        modules.insert(site.module.substr(site.module.rfind('.') + 1));
      } else {
        params.push_back(site.module + ".weight");
      }
    } else if (site.experts != nullptr && site.experts->defined()) {
      // <block>.experts.<param>: the module path below model.layers.<l>.
      const size_t block = site.module.rfind('.', site.module.rfind('.') - 1) + 1;
      expert_params.insert(absl::StrCat(site.module.substr(block), ".", site.expert_param));
    }
  }
  for (const std::string& p : expert_params) params.push_back(p);
  return AdapterConfigJson(o, base_model, std::vector<std::string>(modules.begin(), modules.end()), params);
}

std::vector<std::pair<std::string, at::Tensor>> PerExpertAdapterTensors(ModelWeights& w,
                                                                        const ExpertGather& full_experts) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const LoraSite& site : LoraSites(w)) {
    if (site.linear != nullptr && site.linear->defined()) {
      out.emplace_back(PeftKey(site, false, "lora_A"), site.linear->a.detach());
      out.emplace_back(PeftKey(site, false, "lora_B"), site.linear->b.detach());
      continue;
    }
    if (site.experts == nullptr || !site.experts->defined()) continue;
    TORCH_CHECK(HasPerExpertAdapterLayout(*site.spec), site.module,
                ": no per-expert adapter layout for these experts (use PeftAdapterTensors)");
    const at::Tensor a = full_experts(site.experts->a.detach());  // [E, in, r]
    const at::Tensor b = full_experts(site.experts->b.detach());  // [E, r, out]
    const bool gate_up = IsGateUpSite(site);
    const int64_t half = b.size(2) / 2;
    auto key = [&](int64_t e, const char* proj, const char* ab) {
      std::string name = ExpertTensorName(*site.spec, e, proj);  // <module>.<e>.<proj>.weight
      return absl::StrCat(kPeftPrefix, ModuleOf(name), ".", ab, ".weight");
    };
    for (int64_t e = 0; e < a.size(0); ++e) {
      at::Tensor A = a[e].t().contiguous();  // [r, in]
      at::Tensor B = b[e].t();               // [out, r]
      if (gate_up) {
        out.emplace_back(key(e, "gate_proj", "lora_A"), A);
        out.emplace_back(key(e, "gate_proj", "lora_B"), B.narrow(0, 0, half).contiguous());
        out.emplace_back(key(e, "up_proj", "lora_A"), A.clone());
        out.emplace_back(key(e, "up_proj", "lora_B"), B.narrow(0, half, half).contiguous());
      } else {
        out.emplace_back(key(e, "down_proj", "lora_A"), A);
        out.emplace_back(key(e, "down_proj", "lora_B"), B.contiguous());
      }
    }
  }
  return out;
}

std::string PerExpertAdapterConfigJson(ModelWeights& w, const LoraOptions& o, const std::string& base_model) {
  std::set<std::string> modules;
  for (const LoraSite& site : LoraSites(w)) {
    if (site.linear != nullptr && site.linear->defined()) {
      modules.insert(site.module.substr(site.module.rfind('.') + 1));
    } else if (site.experts != nullptr && site.experts->defined()) {
      const bool gate_up = IsGateUpSite(site);
      for (const char* proj : gate_up ? std::vector<const char*>{"gate_proj", "up_proj"}
                                      : std::vector<const char*>{"down_proj"}) {
        std::string m = ModuleOf(ExpertTensorName(*site.spec, 0, proj));
        modules.insert(m.substr(m.rfind('.') + 1));
      }
    }
  }
  return AdapterConfigJson(o, base_model, std::vector<std::string>(modules.begin(), modules.end()), {});
}


absl::StatusOr<LoraOptions> LoadPeftAdapter(const std::string& dir, ModelWeights& w, const ModelConfig& c,
                                            const ModelOptions& mo) {
  const std::string config_path = dir + "/adapter_config.json";
  FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(config_path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": not a JSON object"));
  }
  auto bad = [&](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": ", field, ": ", why));
  };
  if (j.value("peft_type", std::string("LORA")) != "LORA") return bad("peft_type", "only LORA adapters load");
  LoraOptions o;
  if (!j.contains("r") || !j["r"].is_number_integer()) return bad("r", "missing or not an integer");
  o.rank = j["r"].get<int64_t>();
  if (o.rank < 1) return bad("r", "must be positive");
  o.alpha = j.contains("lora_alpha") && j["lora_alpha"].is_number() ? j["lora_alpha"].get<double>() : 8.0;
  o.use_rslora = j.value("use_rslora", false);
  if (j.contains("lora_dropout") && j["lora_dropout"].is_number() && j["lora_dropout"].get<double>() != 0) {
    return bad("lora_dropout", "only 0 is supported");
  }
  for (const char* field : {"rank_pattern", "alpha_pattern"}) {
    if (j.contains(field) && j[field].is_object() && !j[field].empty()) {
      return bad(field, "per-module ranks or alphas are not supported");
    }
  }
  for (const char* field : {"use_dora", "lora_bias", "fan_in_fan_out"}) {
    if (j.value(field, false)) return bad(field, "not supported");
  }
  if (j.contains("bias") && j["bias"].is_string() && j["bias"].get<std::string>() != "none") {
    return bad("bias", "only none is supported");
  }

  const std::string file = dir + "/adapter_model.safetensors";
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsReader> reader, SafetensorsReader::Open(file));
  std::set<std::string> unused;
  for (const std::string& k : reader->Keys()) unused.insert(k);
  for (NamedParam& p : ListParameters(w)) p.tensor->set_requires_grad(false);
  c10::NoGradGuard no_grad;
  auto opts = at::TensorOptions().dtype(mo.dtype).device(mo.device);
  const double scale = o.scale();
  const int64_t r = o.rank;
  const int64_t E_local = LocalExperts(c, mo);
  std::vector<LoraSite> sites = LoraSites(w);
  // Which layers' experts carry both adapters decides PEFT's key nesting: look at the file.
  std::set<int64_t> both;
  for (const LoraSite& s : sites) {
    if (s.experts != nullptr && reader->Has(absl::StrCat(kPeftPrefix, s.module, ".base_layer.lora_A.weight"))) {
      both.insert(s.layer);
    }
  }
  auto load = [&](const std::string& key, std::vector<int64_t> shape) -> absl::StatusOr<at::Tensor> {
    unused.erase(key);
    return reader->Load(key, shape, at::kFloat);
  };
  bool any = false;
  for (LoraSite& site : sites) {
    const bool b2 = both.count(site.layer) > 0;
    const std::string key_a = PeftKey(site, b2, "lora_A"), key_b = PeftKey(site, b2, "lora_B");
    if (!reader->Has(key_a) && !reader->Has(key_b)) continue;
    if (!reader->Has(key_a) || !reader->Has(key_b)) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", reader->Has(key_a) ? key_b : key_a, " is missing"));
    }
    any = true;
    if (site.linear != nullptr) {
      const int64_t out = site.base_shape[0], in = site.base_shape[1];
      FTD_ASSIGN_OR_RETURN(at::Tensor a, load(key_a, std::vector<int64_t>{r, in}));
      FTD_ASSIGN_OR_RETURN(at::Tensor b, load(key_b, std::vector<int64_t>{out, r}));
      *site.linear = {a.to(opts).requires_grad_(true), b.to(opts).requires_grad_(true), scale};
    } else {
      const int64_t E = site.base_shape[0], in = site.base_shape[1], out = site.base_shape[2];
      FTD_ASSIGN_OR_RETURN(at::Tensor A, load(key_a, std::vector<int64_t>{E * r, in}));
      FTD_ASSIGN_OR_RETURN(at::Tensor B, load(key_b, std::vector<int64_t>{out, r * E}));
      at::Tensor a = ExpertAFromPeft(A, E).narrow(0, mo.expert_begin, E_local).contiguous();
      at::Tensor b = ExpertBColumnsFromHf(site, ExpertBFromPeft(B, E)).narrow(0, mo.expert_begin, E_local).contiguous();
      *site.experts = {a.to(opts).requires_grad_(true), b.to(opts).requires_grad_(true), scale};
    }
  }
  if (!unused.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": tensor ", *unused.begin(),
                                                   " adapts nothing the engine knows in this ", c.model_type,
                                                   " model (", unused.size(), " such tensors)"));
  }
  if (!any) return absl::InvalidArgumentError(absl::StrCat(file, ": no adapter tensors"));
  w.lora = true;
  return o;
}

void MergeLoraAdapters(ModelWeights& w) {
  c10::NoGradGuard no_grad;
  for (const TensorSpec& spec : w.layout) {
    at::Tensor& t = SlotTensor(w, spec);
    if (t.defined()) t.set_requires_grad(false);
  }
  for (LoraSite& site : LoraSites(w)) {
    at::Tensor& base = *site.base;
    at::Tensor delta;  // in the base's layout, fp32
    if (site.linear != nullptr && site.linear->defined()) {
      delta = at::mm(site.linear->b.to(at::kFloat), site.linear->a.to(at::kFloat)) * site.linear->scale;
      *site.linear = LoraLinear{};
    } else if (site.experts != nullptr && site.experts->defined()) {
      delta = at::bmm(site.experts->a.to(at::kFloat), site.experts->b.to(at::kFloat)) * site.experts->scale;
      *site.experts = LoraExperts{};
    } else {
      continue;
    }
    base.copy_((base.to(at::kFloat) + delta).to(base.scalar_type()));
  }
  w.lora = false;
}

}  // namespace ftd::engine
