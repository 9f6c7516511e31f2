// ftd-bench: training throughput of the engine on one device, printed as one JSON line with
// the keys of the HF v5 baseline (bench/hf_v5_baseline.py) plus mfu and the gate used.
//
// A thin driver over engine/train/train_step.h, the step every training job runs: the same
// precision policy, clipping and CUDA-graph replay as `ftd-train` with the same settings, whose
// defaults it takes (precision auto, grad_clip 1.0, weight decay 0, lr 1e-5). The input is the
// baseline's: one batch of random ids (torch.randint with seed 1234) every step. Each step is
// timed from its launch to its results on the host, the optimizer step inside.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/model/config.h"
#include "engine/model/core/backends.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/lora.h"
#include "engine/model/transformer.h"
#include "engine/train/train_step.h"
#include "engine/util/device_memory.h"
#include "nlohmann/json.hpp"

using namespace ftd::engine;

namespace {
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
int Fail(const absl::Status& s) {
  std::cerr << "error: " << s.message() << "\n";
  return 1;
}

// Per-kernel GPU time of one profiled step, written to `path` (and its Chrome trace to `trace`).
void ProfileStep(TrainStep& step, const StepInput& input, const std::string& path, const std::string& trace) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  std::set<ActivityType> acts = {ActivityType::CPU, ActivityType::CUDA};
  const torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO);
  prof::prepareProfiler(cfg, acts);
  DeviceSynchronize();
  prof::enableProfiler(cfg, acts);
  auto p0 = std::chrono::steady_clock::now();
  if (step.Launch(input).ok()) (void)step.Wait();
  const double wall_ms = std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count() * 1e3;
  auto result = prof::disableProfiler();
  if (!trace.empty()) result->save(trace);
  std::map<std::string, std::pair<double, int>> per_kernel;
  double gpu_ms = 0;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    const double ms = e.durationNs() / 1e6;
    auto& slot = per_kernel[e.name().substr(0, 110)];
    slot.first += ms;
    slot.second += 1;
    gpu_ms += ms;
  }
  std::vector<std::pair<double, std::string>> rows;
  for (auto& [name, v] : per_kernel) rows.push_back({v.first, absl::StrCat(v.second, "x ", name)});
  std::sort(rows.rbegin(), rows.rend());
  if (FILE* f = std::fopen(path.c_str(), "w")) {
    std::fprintf(f, "profiled step: wall %.1f ms, GPU kernel time %.1f ms (summed over streams)\n", wall_ms, gpu_ms);
    for (size_t i = 0; i < rows.size() && i < 60; ++i) {
      std::fprintf(f, "%8.2f ms %5.1f%%  %s\n", rows[i].first, 100 * rows[i].first / gpu_ms, rows[i].second.c_str());
    }
    std::fclose(f);
  }
}

// Fractions of the parameters' elements that training left exactly as they were: as the
// forward reads them (the bf16 weights) and as the optimizer holds them (fp32 masters: the
// parameter plus its low half under compact, the separate copy under fp32_master).
nlohmann::json UnchangedFractions(MoeTransformer& model, const TrainStep& step, const std::vector<at::Tensor>& initial) {
  std::map<std::string, at::Tensor> state;
  for (auto& [k, v] : step.StateTensors()) state[k] = v;
  double total = 0, same_weights = 0, same_masters = 0;
  std::vector<NamedParam> params = model.Parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor now = params[i].tensor->detach().cpu();
    at::Tensor same = now.eq(initial[i]);
    at::Tensor master_same = same;
    if (auto it = state.find("master_low." + params[i].name); it != state.end()) {
      master_same = same.logical_and(it->second.eq(0));  // the initial masters were the bf16 values
    } else if (auto m = state.find("master." + params[i].name); m != state.end()) {
      master_same = m->second.eq(initial[i].to(at::kFloat));
    }
    total += static_cast<double>(now.numel());
    same_weights += same.sum().item<double>();
    same_masters += master_same.sum().item<double>();
  }
  return {{"weights", same_weights / total}, {"masters", same_masters / total}};
}

}  // namespace

int main(int argc, char** argv) {
  ftd::engine::ConfigureDeviceAllocator();  // as ftd-train does, before anything touches CUDA
  CLI::App app{"ftd-bench: engine training throughput (one JSON line)"};
  std::string preset = "qwen3-30b-a3b", model_dir, gate = "real", device = "auto", precision = "auto";
  int64_t layers = 4, seq = 4096, batch = 1, steps = 8, warmup = 3;
  double grad_clip = 1.0, weight_decay = 0.0, lr = 1e-5;
  bool ckpt = false, no_cuda_graph = false, save_expert_act = false, mamba_kernels = false;
  int64_t loss_chunk = ModelOptions{}.loss_chunk_tokens;
  std::string sink_attention = "auto", experts = "grouped_mm";
  std::string profile_out, trace_out;
  int64_t lora_rank = 0;
  double lora_alpha = 0;
  std::string lora_targets = "attention,experts", adapter_dir;
  app.add_option("--preset", preset)->capture_default_str();
  app.add_option("--lora-rank", lora_rank, "method lora: adapters of this rank on a frozen base (0: full fine-tune)")
      ->capture_default_str();
  app.add_option("--lora-alpha", lora_alpha, "LoRA alpha (0: 2 x rank)")->capture_default_str();
  app.add_option("--lora-targets", lora_targets, "comma-separated: attention, mlp, experts, shared_experts")
      ->capture_default_str();
  app.add_option("--adapter", adapter_dir, "method lora: start from this PEFT adapter directory (its rank)");
  app.add_option("--layers", layers)->capture_default_str();
  app.add_option("--seq", seq)->capture_default_str();
  app.add_option("--batch", batch, "rows per step (one micro-batch)")->capture_default_str();
  app.add_option("--steps", steps, "timed steps")->capture_default_str();
  app.add_option("--warmup", warmup, "untimed steps first (the CUDA graph is captured in the third)")
      ->capture_default_str();
  app.add_option("--gate", gate, "real | balanced")->capture_default_str();
  app.add_option("--experts", experts, "backends.experts: grouped_mm | ftd | loop")->capture_default_str();
  app.add_option("--model", model_dir, "start from this HF checkpoint instead of a random init");
  app.add_option("--device", device, "auto | cpu | cuda")->capture_default_str();
  app.add_option("--precision", precision, "auto | compact | compact_sr | fp32_master | bf16_pure")->capture_default_str();
  app.add_option("--grad-clip", grad_clip, "global-norm clipping; 0 steps the optimizer inside backward")
      ->capture_default_str();
  app.add_option("--weight-decay", weight_decay)->capture_default_str();
  app.add_option("--lr", lr)->capture_default_str();
  app.add_flag("--ckpt", ckpt, "activation checkpointing");
  bool fused_expert_update = false, deferred_epilogue = false;
  int64_t deferred_chunk_mib = 0;
  int update_sms = 0;
  app.add_option("--update-sms", update_sms,
                 "grad_clip 0 on CUDA, compact precision: the in-backward updates run by the bulk-copy kernel on this many SMs, which the backward GEMMs leave to them (AdamWConfig::side_stream_bulk_sms and backward_sm_carveout); 0: off")
      ->check(CLI::Range(0, 1024));
  app.add_flag("--fused-expert-update", fused_expert_update,
               "with --experts ftd: step the expert weights inside their weight-gradient GEMM (AdamWConfig::fuse_expert_update)");
  app.add_flag("--deferred-epilogue", deferred_epilogue,
               "with --fused-expert-update and grad_clip > 0: the deferred expert update in the GEMM's epilogue "
               "(AdamWConfig::deferred_update_in_epilogue) instead of the GEMM, then the element-wise step");
  app.add_option("--deferred-chunk-mib", deferred_chunk_mib,
                 "with --fused-expert-update and grad_clip > 0: form the deferred expert gradients in chunks of whole "
                 "experts of at most this many MiB (AdamWConfig::deferred_update_chunk_bytes; 0: whole weights)")
      ->capture_default_str();
  app.add_flag("--no-cuda-graph", no_cuda_graph, "run every step eagerly");
  app.add_flag("--save-expert-act", save_expert_act, "keep the experts' SwiGLU output for backward (no recompute)");
  app.add_option("--sink-attention", sink_attention,
                 "attention sinks (GPT-OSS): flash (FlashAttention-2), sdpa (a sink key and masks), "
                 "auto (flash where it serves the device)")
      ->check(CLI::IsMember({"auto", "flash", "sdpa"}))
      ->capture_default_str();
  app.add_flag("--mamba-kernels", mamba_kernels,
               "Mamba2 layers (nemotron_h) through the conv1d and SSD-scan kernels instead of HF's chunked ATen form "
               "(off by default: slower than the ATen form on an H100)");
  app.add_option("--loss-chunk", loss_chunk, "tokens per chunk of the fused linear cross-entropy")->capture_default_str();
  app.add_option("--profile", profile_out, "after the timed steps, profile one step and write a per-kernel table here");
  app.add_option("--trace", trace_out, "with --profile: also write the step's Chrome trace (kernels per stream) here");
  double prompt_fraction = 0;
  bool all_loss_rows = false;
  app.add_option("--prompt-fraction", prompt_fraction,
                 "labels of this leading fraction of each row ignored (-100), as a chat row's prompt; HF v5's "
                 "baseline takes the same flag")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_flag("--all-loss-rows", all_loss_rows,
               "lm_head's GEMMs over every row, also those without a target (TrainStepOptions::loss_skips_ignored_rows off)");
  bool report_unchanged = false;
  app.add_flag("--report-unchanged", report_unchanged,
               "report the fraction of parameters (as bf16 weights, and as the optimizer's masters) that all "
               "warmup + steps updates left exactly unchanged");
  CLI11_PARSE(app, argc, argv);

  absl::StatusOr<ModelConfig> config = model_dir.empty() ? PresetConfig(preset) : LoadModelConfig(model_dir);
  if (!config.ok()) return Fail(config.status());
  if (model_dir.empty() && layers > 0) *config = WithLayers(*config, layers);
  if (sink_attention != "auto" && !config->attention_sinks) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--sink-attention: ", config->model_type, " has no attention sinks (GPT-OSS presets have)")));
  }
  const bool cuda = device == "cuda" || (device == "auto" && at::hasCUDA());
  absl::StatusOr<ExpertsBackend> experts_backend = ParseExpertsBackend(experts);
  if (!experts_backend.ok()) return Fail(experts_backend.status());
  SetExpertsBackend(*experts_backend);
  if (*experts_backend == ExpertsBackend::kLoop) no_cuda_graph = true;  // the loop reads the counts on the host
  ModelOptions options;
  options.device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  options.dtype = at::kBFloat16;
  options.gate = gate == "balanced" ? GateMode::kBalanced : GateMode::kReal;
  options.activation_checkpointing = ckpt;
  options.loss_chunk_tokens = loss_chunk;
  options.save_expert_activation = save_expert_act;
  options.sink_attention = sink_attention == "flash" ? SinkAttentionPath::kFlash
                           : sink_attention == "sdpa" ? SinkAttentionPath::kSdpa
                                                      : SinkAttentionPath::kAuto;
  options.mamba_kernels = mamba_kernels;

  absl::StatusOr<ModelWeights> weights = model_dir.empty() ? absl::StatusOr<ModelWeights>(InitRandomWeights(*config, options, 0))
                                                           : LoadHfWeights(model_dir, *config, options);
  if (!weights.ok()) return Fail(weights.status());
  const bool lora = lora_rank > 0 || !adapter_dir.empty();
  if (!adapter_dir.empty()) {
    absl::StatusOr<LoraOptions> loaded = LoadPeftAdapter(adapter_dir, *weights, *config, options);
    if (!loaded.ok()) return Fail(loaded.status());
    lora_rank = loaded->rank;
    lora_alpha = loaded->alpha;
  } else if (lora) {
    LoraOptions lo;
    lo.rank = lora_rank;
    lo.alpha = lora_alpha > 0 ? lora_alpha : 2.0 * static_cast<double>(lora_rank);
    lora_alpha = lo.alpha;
    lo.targets = 0;
    for (absl::string_view t : absl::StrSplit(lora_targets, ',')) {
      uint32_t bit = 0;
      if (!LoraTargetFromName(std::string(t), &bit)) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("--lora-targets: unknown target ", t)));
      }
      lo.targets |= bit;
    }
    if (absl::Status s = AddLoraAdapters(*weights, *config, options, lo, 0); !s.ok()) return Fail(s);
  }
  EnableGradients(*weights);  // with LoRA: the adapters only
  auto model = MoeTransformer::Create(*config, options, std::move(*weights));
  if (!model.ok()) return Fail(model.status());
  int64_t n_params = 0;
  for (auto& p : (*model)->Parameters()) n_params += p.tensor->numel();

  // As the trainer resolves it (auto: fp32_master for LoRA adapters).
  auto policy = ftd::ResolveJobPrecision(precision, /*fp32_params=*/false, lora);
  if (!policy.ok()) return Fail(policy.status());
  TrainStepOptions o;
  o.precision = *policy;
  o.adam.weight_decay = weight_decay;
  o.adam.fuse_expert_update = fused_expert_update;
  o.adam.deferred_update_in_epilogue = deferred_epilogue;
  o.adam.deferred_update_chunk_bytes = deferred_chunk_mib << 20;
  o.adam.side_stream_bulk_sms = update_sms;
  o.adam.backward_sm_carveout = update_sms;
  o.grad_clip = grad_clip;
  o.micro_batch = batch;
  o.seq_len = seq;
  o.loss_skips_ignored_rows = !all_loss_rows;
  // A LoRA rank not a multiple of 8 takes the per-expert loop (host reads): no graph capture.
  o.cuda_graphs = !no_cuda_graph && !(lora && lora_rank % 8 != 0);
  auto step = TrainStep::Create(model->get(), /*groups=*/nullptr, /*dispatch=*/nullptr, o);
  if (!step.ok()) return Fail(step.status());

  // The baseline's inputs: torch.randint(0, V, (B, S), generator=manual_seed(1234)).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  at::Tensor ids = at::randint(0, config->vocab_size, {batch, seq}, gen, at::kLong);
  StepInput input;
  // With --prompt-fraction, HF labels -100 over each row's first positions (as the baseline's).
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, static_cast<int64_t>(prompt_fraction * static_cast<double>(seq))).fill_(-100);
  input.micro.push_back({ids, ShiftLabels(labels), {}, {}});
  input.targets_total = input.micro[0].targets.ne(-100).sum().item<int64_t>();
  input.lr = lr;

  // The initial weights, for --report-unchanged (on the host).
  std::vector<at::Tensor> initial;
  if (report_unchanged) {
    for (NamedParam& p : (*model)->Parameters()) initial.push_back(p.tensor->detach().cpu());
  }

  std::vector<double> tot, fwd, bwd, losses;
  int64_t graph_memory = 0;
  bool replayed = false;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    if (i == warmup) ResetPeakMemory();
    DeviceSynchronize();
    auto t0 = std::chrono::steady_clock::now();
    absl::Status launched = (*step)->Launch(input);
    if (!launched.ok()) return Fail(launched);
    auto outcome = (*step)->Wait();
    if (!outcome.ok()) return Fail(outcome.status());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    losses.push_back(outcome->loss);
    graph_memory = std::max(graph_memory, outcome->graph_memory_bytes);
    if (i >= warmup) {
      tot.push_back(secs);
      fwd.push_back(outcome->forward_seconds);
      bwd.push_back(outcome->backward_seconds);
      replayed = outcome->replayed;
    }
  }
  const int64_t peak_allocated = PeakMemoryBytes();
  if (!profile_out.empty() && cuda) ProfileStep(**step, input, profile_out, trace_out);
  const int64_t peak_bytes = std::max(peak_allocated, graph_memory);
  const double step_s = Median(tot);
  const double tokens = static_cast<double>(batch * seq);
  const double tflops = config->TrainingFlopsPerToken(seq) * tokens / step_s / 1e12;
  std::vector<double> first(losses.begin(), losses.begin() + std::min<size_t>(5, losses.size()));
  for (double& l : first) l = std::round(l * 1e5) / 1e5;
  auto gib = [](int64_t b) { return std::round(static_cast<double>(b) / double(1ull << 30) * 100) / 100; };
  nlohmann::json unchanged = nullptr;
  if (report_unchanged) unchanged = UnchangedFractions(**model, **step, initial);
  nlohmann::json j = {{"impl", "ftd"},
                      {"gate", gate},
                      {"ckpt", ckpt},
                      {"layers", config->num_hidden_layers},
                      {"seq", seq},
                      {"batch", batch},
                      {"params", n_params},  // trained: the adapters' with LoRA
                      {"lora_rank", lora_rank},
                      {"lora_alpha", lora_alpha},
                      {"tps", std::round(tokens / step_s)},
                      {"fwd_ms", std::round(Median(fwd) * 1e4) / 10},
                      {"bwd_ms", std::round(Median(bwd) * 1e4) / 10},
                      {"step_ms", std::round(step_s * 1e4) / 10},
                      {"tflops", std::round(tflops * 10) / 10},
                      {"mfu", cuda ? std::round(tflops / 989.0 * 1000) / 1000 : 0.0},
                      {"peak_gib", gib(peak_bytes)},
                      {"peak_allocated_gib", gib(peak_allocated)},
                      {"cuda_graph", replayed},
                      {"precision", ftd::PrecisionPolicyName(*policy)},
                      {"grad_clip", grad_clip},
                      {"optimizer_in_backward", (*step)->optimizer_in_backward()},
                      {"save_expert_activation", save_expert_act},
                      {"sink_attention", !config->attention_sinks ? "none" : SinkLayersUseFlash(*config, options) ? "flash" : "sdpa"},
                      {"experts", experts},
                      {"fused_expert_update", fused_expert_update},
                      {"deferred_epilogue", deferred_epilogue},
                      {"deferred_chunk_mib", deferred_chunk_mib},
                      {"update_sms", update_sms},
                      {"mamba_kernels", cuda && config->NumMambaLayers() > 0 && mamba_kernels},
                      {"losses", first},
                      {"device", cuda ? "cuda" : "cpu"},
                      {"allocator", ftd::engine::DeviceAllocatorSetting()},
                      {"optimizer_in_timer", true},
                      {"loss_chunk", loss_chunk},
                      {"prompt_fraction", prompt_fraction},
                      {"loss_skips_ignored_rows", !all_loss_rows},
                      {"unchanged", unchanged}};
  std::cout << j.dump() << std::endl;
  return 0;
}
