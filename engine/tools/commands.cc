#include "engine/tools/commands.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <unistd.h>
#include <memory>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <CLI/CLI.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/model/core/backends.h"
#include "engine/dist/launcher.h"
#include "engine/io/safetensors.h"
#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/lora.h"
#include "engine/model/registry.h"
#include "engine/model/transformer.h"
#include "engine/train/trainer.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace {

struct InitModelArgs {
  std::string preset = "tiny";
  int64_t layers = 0;
  int64_t experts = 0;
  uint64_t seed = 0;
  std::string dtype = "bf16";
  std::string out;
  bool config_only = false;
};
struct ForwardArgs {
  std::string model, adapter, input, segments, out, device = "cpu", dtype = "fp32";
  bool grads = false;
};
struct ResaveArgs {
  std::string model, out;
  uint64_t max_shard_bytes = 5ull << 30;
};
struct TrainArgs {
  std::string spec;
  bool resume = false;
  int64_t stop_after = 0;
  std::string metrics_out;
};
struct LaunchArgs {
  int nproc = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  std::vector<std::string> command;
};
struct CopyArgs {
  std::string in, out;
  uint64_t max_shard_bytes = 5ull << 30;
};
struct InspectArgs {
  std::string dir;
  bool json = false;
};

InitModelArgs g_init;
ForwardArgs g_forward;
TrainArgs g_train;
CopyArgs g_copy;
InspectArgs g_inspect;
ResaveArgs g_resave;
LaunchArgs g_launch;

int Fail(const absl::Status& status) {
  std::cerr << "error: " << status.message() << "\n";
  // 2: bad usage or spec (a field named in the message); 1: any other failure.
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::Status InitModel(const InitModelArgs& a) {
  FTD_ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(a.preset));
  if (a.layers > 0) config = WithLayers(config, a.layers);
  if (a.experts > 0) {
    config.num_experts = a.experts;
    config.num_experts_per_tok = std::min(config.num_experts_per_tok, a.experts);
  }
  if (a.dtype != "bf16" && a.dtype != "fp32") return absl::InvalidArgumentError("--dtype must be bf16 or fp32");
  at::ScalarType dtype = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  config.dtype = DtypeName(dtype);
  // The overridden shape must still be a valid config of its family (e.g. experts in n_group groups).
  FTD_ASSIGN_OR_RETURN(config, ParseModelConfig(ModelConfigToJson(config), absl::StrCat("preset ", a.preset)));
  if (a.config_only) {
    // The shape alone (full-size presets for counting and planning, without their weights).
    std::error_code ec;
    std::filesystem::create_directories(a.out, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", a.out, ": ", ec.message()));
    FTD_RETURN_IF_ERROR(WriteFileAtomically(a.out + "/config.json", ModelConfigToJson(config)));
    std::cout << absl::StrFormat("wrote %s/config.json: preset %s (%s), %d layers, %.1fM parameters (%.1fM active)\n",
                                 a.out, a.preset, FindModelFamily(config.model_type)->display_name(),
                                 config.num_hidden_layers, config.TotalParameters() / 1e6,
                                 config.ActiveParameters() / 1e6);
    return absl::OkStatus();
  }
  ModelOptions options;
  options.dtype = dtype;
  ModelWeights weights = InitRandomWeights(config, options, a.seed);
  FTD_RETURN_IF_ERROR(SaveHfCheckpoint(a.out, config, weights, options, dtype));
  std::cout << absl::StrFormat("wrote %s: preset %s (%s), %d layers, %d experts, %.1fM parameters (%.1fM active), %s\n",
                               a.out, a.preset, FindModelFamily(config.model_type)->display_name(),
                               config.num_hidden_layers, config.num_experts, config.TotalParameters() / 1e6,
                               config.ActiveParameters() / 1e6, config.dtype);
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> ReadIdsJson(const std::string& path) {
  FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_array() || j.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON array of token id arrays"));
  }
  const size_t S = j[0].is_array() ? j[0].size() : 0;
  if (S == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": row 0 must be a non-empty array of ids"));
  at::Tensor ids = at::empty({static_cast<int64_t>(j.size()), static_cast<int64_t>(S)}, at::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  for (size_t b = 0; b < j.size(); ++b) {
    if (!j[b].is_array() || j[b].size() != S) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": row ", b, " must have ", S, " ids like row 0"));
    }
    for (size_t i = 0; i < S; ++i) {
      if (!j[b][i].is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": row ", b, " item ", i, " is not an integer"));
      }
      acc[b][i] = j[b][i].get<int64_t>();
    }
  }
  return ids;
}

// Packed rows for `forward --segments`: document ids [B, S] (non-decreasing along each row, one
// run per document) -> positions restarting at each document and targets that stop at its end.
absl::Status PackedRows(const at::Tensor& ids, const at::Tensor& seg, const std::string& source, Batch* batch) {
  if (seg.sizes() != ids.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": must have the shape of the ids"));
  }
  const int64_t B = ids.size(0), S = ids.size(1);
  at::Tensor positions = at::empty({B, S}, at::kLong);
  at::Tensor targets = ShiftLabels(ids);
  auto sa = seg.accessor<int64_t, 2>();
  auto pa = positions.accessor<int64_t, 2>();
  auto ta = targets.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < S; ++t) {
      if (t > 0 && sa[b][t] < sa[b][t - 1]) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": row ", b, " item ", t, ": document ids must not decrease along a row"));
      }
      pa[b][t] = t > 0 && sa[b][t] == sa[b][t - 1] ? pa[b][t - 1] + 1 : 0;
      if (t + 1 < S && sa[b][t + 1] != sa[b][t]) ta[b][t] = -100;  // a document's last token predicts nothing
    }
  }
  batch->segment_ids = seg;
  batch->position_ids = positions;
  batch->targets = targets;
  return absl::OkStatus();
}

absl::Status Forward(const ForwardArgs& a) {
  FTD_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(a.model));
  FTD_ASSIGN_OR_RETURN(at::Tensor ids, ReadIdsJson(a.input));
  if (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(a.input, ": token ids must be in [0, ", config.vocab_size, ")"));
  }
  ModelOptions options;
  if (a.device == "cuda") {
    if (!at::hasCUDA()) return absl::FailedPreconditionError("--device cuda: no GPU is visible");
    options.device = at::Device(at::kCUDA, 0);
  } else if (a.device != "cpu") {
    return absl::InvalidArgumentError("--device must be cpu or cuda");
  }
  if (a.dtype != "fp32" && a.dtype != "bf16") return absl::InvalidArgumentError("--dtype must be fp32 or bf16");
  options.dtype = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  FTD_ASSIGN_OR_RETURN(ModelWeights weights, LoadHfWeights(a.model, config, options));
  if (!a.adapter.empty()) FTD_RETURN_IF_ERROR(LoadPeftAdapter(a.adapter, weights, config, options).status());
  if (a.grads) EnableGradients(weights);  // with an adapter: the adapter's tensors only
  FTD_ASSIGN_OR_RETURN(auto model, MoeTransformer::Create(config, options, std::move(weights)));
  c10::AutoGradMode grad_mode(a.grads);
  Batch batch;
  batch.targets = ShiftLabels(ids);
  if (!a.segments.empty()) {
    FTD_ASSIGN_OR_RETURN(at::Tensor seg, ReadIdsJson(a.segments));
    FTD_RETURN_IF_ERROR(PackedRows(ids, seg, a.segments, &batch));
    batch.position_ids = batch.position_ids.to(options.device);
  }
  batch.input_ids = ids.to(options.device);
  batch.targets = batch.targets.to(options.device);
  ForwardResult r = model->Forward(batch, /*return_logits=*/true);
  at::Tensor loss = r.loss_sum / static_cast<double>(std::max<int64_t>(1, r.num_targets));
  if (r.aux_loss.defined()) loss = loss + config.router_aux_loss_coef * r.aux_loss;
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"logits", r.logits.detach().to(at::kCPU).contiguous()},
      {"loss", loss.detach().to(at::kCPU, at::kFloat).reshape({})}};
  if (a.grads && model->weights().lora) {
    loss.backward();
    // The adapter's gradients in PEFT's names and layout.
    auto identity = [](const at::Tensor& t) { return t; };
    for (auto& [name, t] : PeftAdapterTensors(model->weights(), identity, /*grads=*/true)) {
      tensors.emplace_back("grad." + name, t.to(at::kCPU, at::kFloat).contiguous());
    }
  } else if (a.grads) {
    loss.backward();
    // Gradients in HF naming: the weights' structure with each tensor replaced by its grad.
    ModelWeights grads = model->weights();
    for (NamedParam& p : ListParameters(grads)) *p.tensor = p.tensor->grad();
    for (const TensorSpec& spec : grads.layout) {
      if (spec.role == TensorRole::kBuffer) SlotTensor(grads, spec) = at::Tensor();  // not parameters
    }
    if (grads.tied) grads.lm_head = grads.embed;
    for (auto& [name, t] : ToHfTensors(grads, config, options, at::kFloat)) tensors.emplace_back("grad." + name, t);
  }
  std::filesystem::path out(a.out);
  std::string dir = out.parent_path().empty() ? "." : out.parent_path().string();
  std::string tmp_dir = absl::StrCat(dir, "/.forward-", ::getpid());
  FTD_RETURN_IF_ERROR(SaveSafetensors(tmp_dir, tensors));
  std::error_code ec;
  std::filesystem::rename(tmp_dir + "/model.safetensors", out, ec);
  (void)RemoveTree(tmp_dir);
  if (ec) return absl::InternalError(absl::StrCat("cannot write ", a.out, ": ", ec.message()));
  std::cout << absl::StrFormat("loss %.8f\n", loss.item<double>());
  return absl::OkStatus();
}

absl::Status Resave(const ResaveArgs& a) {
  FTD_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(a.model));
  ModelOptions options;
  options.dtype = DtypeFromName(config.dtype);
  FTD_ASSIGN_OR_RETURN(ModelWeights weights, LoadHfWeights(a.model, config, options));
  FTD_RETURN_IF_ERROR(ValidateWeights(config, options, weights));
  FTD_RETURN_IF_ERROR(SaveHfCheckpoint(a.out, config, weights, options, options.dtype, a.max_shard_bytes));
  std::cout << "wrote " << a.out << "\n";
  return absl::OkStatus();
}

absl::Status Train(const TrainArgs& a) {
  FTD_ASSIGN_OR_RETURN(TrainSpec spec, LoadTrainSpec(a.spec));
  if (const char* rank = std::getenv("RANK"); rank == nullptr || std::string(rank) == "0") {
    // What runs, for the job's log (the spec loader checked every name).
    std::cout << "backends: method " << spec.method << ", "
              << DescribeBackends(*ParseAttentionBackend(spec.attention), *ParseExpertsBackend(spec.experts))
              << ", dispatcher " << spec.dispatcher << ", zero_stage " << spec.zero_stage << ", gate " << spec.gate
              << "\n";
  }
  TrainOptions options;
  options.resume = a.resume;
  options.stop_after = a.stop_after;
  options.metrics_out = a.metrics_out;
  FTD_ASSIGN_OR_RETURN(std::string final_dir, RunTraining(spec, options, std::cout));
  std::cout << "final checkpoint: " << final_dir << "\n";
  return absl::OkStatus();
}

absl::Status Launch(const LaunchArgs& a) {
  LaunchOptions o;
  o.nproc = a.nproc;
  o.master_addr = a.master_addr;
  o.master_port = a.master_port;
  o.args = a.command;
  std::error_code ec;
  o.program = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) return absl::InternalError(absl::StrCat("cannot find this program's path: ", ec.message()));
  return LaunchLocalRanks(o, std::cout);
}

absl::Status Inspect(const InspectArgs& a) {
  FTD_ASSIGN_OR_RETURN(ModelConfig c, LoadModelConfig(a.dir));
  uint64_t bytes = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(a.dir, ec)) {
    if (e.is_regular_file()) bytes += e.file_size();
  }
  const ModelFamily* family = FindModelFamily(c.model_type);
  nlohmann::json j = {{"family", family != nullptr ? family->display_name() : c.model_type},
                      {"model_type", c.model_type},      {"architecture", c.architecture},
                      {"layers", c.num_hidden_layers}, {"moe_layers", c.NumMoeLayers()},
                      {"experts", c.num_experts},      {"experts_per_token", c.num_experts_per_tok},
                      {"hidden_size", c.hidden_size},  {"vocab_size", c.vocab_size},
                      {"parameters_total", c.TotalParameters()}, {"parameters_active", c.ActiveParameters()},
                      {"dtype", c.dtype},              {"size_on_disk_bytes", bytes}};
  if (a.json) {
    std::cout << j.dump(2) << "\n";
  } else {
    for (auto& [k, v] : j.items()) std::cout << absl::StrFormat("%-20s %s\n", k, v.dump());
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterCommands(CLI::App& app) {
  auto* init = app.add_subcommand("init-model", "Write a random-init HF checkpoint from a preset");
  static const std::string preset_help = absl::StrJoin(PresetNames(), " | ");
  init->add_option("--preset", g_init.preset, preset_help)->capture_default_str();
  init->add_option("--layers", g_init.layers, "Override the number of layers");
  init->add_option("--experts", g_init.experts, "Override the number of experts");
  init->add_option("--seed", g_init.seed, "Random seed")->capture_default_str();
  init->add_option("--dtype", g_init.dtype, "bf16 | fp32")->capture_default_str();
  init->add_option("--out", g_init.out, "Output directory")->required();
  init->add_flag("--config-only", g_init.config_only, "Write config.json only (no weights)");

  auto* fwd = app.add_subcommand("forward", "Logits and loss of token ids (labels = inputs)");
  fwd->add_option("--model", g_forward.model, "HF model directory")->required();
  fwd->add_option("--adapter", g_forward.adapter, "PEFT LoRA adapter directory to apply (adapter_config.json + "
                  "adapter_model.safetensors); --grads then writes the adapter's gradients (grad.<PEFT key>)");
  fwd->add_option("--input", g_forward.input, "ids.json: [[ids...], ...], equal lengths")->required();
  fwd->add_option("--segments", g_forward.segments,
                  "seg.json: document ids like the ids (packed rows: positions restart and targets stop at "
                  "each document's end)");
  fwd->add_option("--out", g_forward.out, "Output .safetensors (logits [B,S,V] fp32, loss)")->required();
  fwd->add_option("--device", g_forward.device, "cpu | cuda")->capture_default_str();
  fwd->add_option("--dtype", g_forward.dtype, "fp32 | bf16")->capture_default_str();
  fwd->add_flag("--grads", g_forward.grads, "Also write every parameter's gradient (grad.<HF name>)");

  auto* resave = app.add_subcommand("resave", "Load an HF checkpoint into the engine and save it again");
  resave->add_option("--model", g_resave.model, "HF model directory")->required();
  resave->add_option("--out", g_resave.out, "Output directory")->required();
  resave->add_option("--max-shard-bytes", g_resave.max_shard_bytes, "Shard size limit")->capture_default_str();

  auto* train = app.add_subcommand("train", "Train one rank from a job spec (YAML or JSON)");
  train->add_option("--spec", g_train.spec, "Job spec file")->required();
  train->add_flag("--resume", g_train.resume, "Continue from the newest checkpoint under the output");
  train->add_option("--stop-after", g_train.stop_after, "Stop after N optimizer steps in this run");
  train->add_option("--metrics-out", g_train.metrics_out,
                    "Append per-step JSON lines here (rank 0; rank R > 0 writes FILE.rank<R>)");

  auto* launch = app.add_subcommand(
      "launch", "Run N local ranks of an ftd-train command with the distributed environment, e.g. "
                "launch --nproc 4 -- train --spec job.yaml");
  launch->add_option("--nproc", g_launch.nproc, "Number of ranks")->required();
  launch->add_option("--master-addr", g_launch.master_addr, "Rendezvous address")->capture_default_str();
  launch->add_option("--master-port", g_launch.master_port, "Rendezvous port (0: a free one)")->capture_default_str();
  launch->add_option("command", g_launch.command, "The ftd-train subcommand and its arguments, after --")->required();

  auto* copy = app.add_subcommand("st-copy", "Read a safetensors checkpoint and write it again");
  copy->add_option("in", g_copy.in, "Input file or directory")->required();
  copy->add_option("out", g_copy.out, "Output directory")->required();
  copy->add_option("--max-shard-bytes", g_copy.max_shard_bytes, "Shard size limit")->capture_default_str();

  auto* inspect = app.add_subcommand("inspect", "Describe an HF MoE checkpoint");
  inspect->add_option("dir", g_inspect.dir, "Model directory")->required();
  inspect->add_flag("--json", g_inspect.json, "JSON output");
}

int RunSelectedCommand(CLI::App& app) {
  absl::Status status;
  if (app.got_subcommand("init-model")) {
    status = InitModel(g_init);
  } else if (app.got_subcommand("forward")) {
    status = Forward(g_forward);
  } else if (app.got_subcommand("train")) {
    status = Train(g_train);
  } else if (app.got_subcommand("st-copy")) {
    status = CopySafetensors(g_copy.in, g_copy.out, g_copy.max_shard_bytes);
  } else if (app.got_subcommand("resave")) {
    status = Resave(g_resave);
  } else if (app.got_subcommand("launch")) {
    status = Launch(g_launch);
  } else if (app.got_subcommand("inspect")) {
    status = Inspect(g_inspect);
  }
  return status.ok() ? 0 : Fail(status);
}

}  // namespace ftd::engine
