// ftd-bench: training throughput of the engine on one device, printed as one JSON line with
// the keys of the HF v5 baseline (bench/hf_v5_baseline.py) plus mfu and the gate used.
// Optimizer as the baseline: bf16 parameters, bf16 AdamW moments, no master copy, lr 1e-5,
// its step inside the timer.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/train/cuda_graph_step.h"
#include "engine/train/optimizer.h"
#include "engine/util/compute_stream.h"
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
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ftd-bench: engine training throughput (one JSON line)"};
  std::string preset = "qwen3-30b-a3b", model_dir, gate = "real", device = "auto";
  int64_t layers = 4, seq = 4096, batch = 1, steps = 8, warmup = 3;
  bool ckpt = false, no_opt_in_bwd = false;
  int64_t loss_chunk = ModelOptions{}.loss_chunk_tokens;
  app.add_option("--preset", preset)->capture_default_str();
  app.add_option("--layers", layers)->capture_default_str();
  app.add_option("--seq", seq)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--steps", steps)->capture_default_str();
  app.add_option("--warmup", warmup)->capture_default_str();
  app.add_option("--gate", gate, "real | balanced")->capture_default_str();
  app.add_option("--model", model_dir, "start from this HF checkpoint instead of a random init");
  app.add_option("--device", device, "auto | cpu | cuda")->capture_default_str();
  app.add_flag("--ckpt", ckpt, "activation checkpointing");
  app.add_flag("--no-optimizer-in-backward", no_opt_in_bwd, "step the optimizer after backward instead of inside it");
  int sm_carveout = 0;
  app.add_option("--sm-carveout", sm_carveout,
                 "SMs the backward GEMMs leave to the side-stream optimizer (optimizer in backward); 0 = none")
      ->capture_default_str();
  bool no_priority_stream = false, blas_lt = false, no_grad_hint = false, adamw_long_blocks = false;
  app.add_flag("--adamw-long-blocks", adamw_long_blocks, "side-stream AdamW with its standalone grid (8 blocks per SM)");
  bool adamw_short_blocks = false;
  app.add_flag("--adamw-short-blocks", adamw_short_blocks, "side-stream AdamW in blocks of one vector per thread");
  int optimizer_sms = 0;
  app.add_option("--optimizer-sms", optimizer_sms,
                 "optimizer in backward: run it in a green context of this many SMs (0 = a plain side stream)")
      ->capture_default_str();
  app.add_flag("--no-priority-stream", no_priority_stream, "run on the default stream, not a high-priority one");
  app.add_flag("--blas-lt", blas_lt, "prefer cuBLASLt for dense GEMMs");
  app.add_flag("--no-grad-hint", no_grad_hint, "scale the loss gradients in backward instead of in the loss GEMMs");
  std::string profile_out;
  app.add_option("--profile", profile_out, "after the timed steps, profile one step and write a per-kernel table here");
  std::string trace_out;
  app.add_option("--trace", trace_out, "with --profile: also write the step's Chrome trace (kernels per stream) here");
  app.add_option("--loss-chunk", loss_chunk, "tokens per chunk of the fused linear cross-entropy")->capture_default_str();
  bool dense_embedding_grad = false;
  app.add_flag("--dense-embedding-grad", dense_embedding_grad,
               "optimizer in backward: form the embedding's dense gradient and step it row-sparse, instead of "
               "updating the table from the lookup's backward");
  int64_t pending_mib = AdamWConfig{}.capture_pending_grad_bytes >> 20;
  app.add_option("--capture-pending-mib", pending_mib,
                 "with --cuda-graph: gradient MiB held for the side-stream optimizer before the compute stream waits")
      ->capture_default_str();
  bool save_expert_act = false;
  app.add_flag("--save-expert-act", save_expert_act, "keep the experts' SwiGLU output for backward (no recompute)");
  bool cuda_graph = false;
  app.add_flag("--cuda-graph", cuda_graph,
               "after the warm-up steps, capture forward and backward (with the optimizer) as two CUDA graphs and "
               "time their replays (engine/train/cuda_graph_step.h)");
  CLI11_PARSE(app, argc, argv);

  if (blas_lt) at::globalContext().setBlasPreferredBackend(at::BlasBackend::Cublaslt);
  absl::StatusOr<ModelConfig> config = model_dir.empty() ? PresetConfig(preset) : LoadModelConfig(model_dir);
  if (!config.ok()) return Fail(config.status());
  if (model_dir.empty() && layers > 0) config->num_hidden_layers = layers;
  const bool cuda = device == "cuda" || (device == "auto" && at::hasCUDA());
  ModelOptions options;
  options.device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  options.dtype = at::kBFloat16;
  options.gate = gate == "balanced" ? GateMode::kBalanced : GateMode::kReal;
  options.activation_checkpointing = ckpt;
  options.loss_chunk_tokens = loss_chunk;
  options.save_expert_activation = save_expert_act;

  absl::StatusOr<ModelWeights> weights = model_dir.empty() ? absl::StatusOr<ModelWeights>(InitRandomWeights(*config, options, 0))
                                                           : LoadHfWeights(model_dir, *config, options);
  if (!weights.ok()) return Fail(weights.status());
  EnableGradients(*weights);
  auto model = MoeTransformer::Create(*config, options, std::move(*weights));
  if (!model.ok()) return Fail(model.status());
  auto params = (*model)->Parameters();
  int64_t n_params = 0;
  for (auto& p : params) n_params += p.tensor->numel();
  AdamWConfig adam;
  adam.weight_decay = 0.01;  // torch.optim.AdamW's default, as the baseline uses
  adam.backward_sm_carveout = sm_carveout;
  adam.side_stream_short_blocks = adamw_short_blocks && !adamw_long_blocks;
  adam.side_stream_sms = optimizer_sms;
  adam.capture_pending_grad_bytes = pending_mib << 20;
  auto opt = AdamW::Create(params, PrecisionPolicy::kBf16Pure, adam);
  if (!opt.ok()) return Fail(opt.status());
  const bool opt_in_bwd = !no_opt_in_bwd;
  if (opt_in_bwd) {
    (*opt)->EnableStepInBackward();
    // The embedding table is updated by its lookup's backward, from the token rows alone.
    AdamW* adamw = opt->get();
    if (!dense_embedding_grad) {
      (*model)->SetEmbeddingLookup(
          [adamw](const at::Tensor& table, const at::Tensor& ids) { return adamw->EmbeddingLookup(table, ids); });
    }
  }

  // The baseline's inputs: torch.randint(0, V, (B, S), generator=manual_seed(1234)).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  at::Tensor ids = at::randint(0, config->vocab_size, {batch, seq}, gen, at::kLong).to(options.device);
  Batch b{ids, ShiftLabels(ids), {}, {}};
  const int64_t num_targets = b.targets.ne(-100).sum().item<int64_t>();
  b.num_targets = num_targets;  // Forward reads nothing back
  if (!no_grad_hint) b.loss_grad_scale = 1.0 / static_cast<double>(std::max<int64_t>(1, num_targets));
  std::optional<ComputeStreamScope> compute_stream;
  if (!no_priority_stream) compute_stream.emplace(options.device);
  if (cuda_graph && (!cuda || no_priority_stream || warmup < 1)) {
    return Fail(absl::InvalidArgumentError(
        "--cuda-graph needs CUDA, the compute stream (not --no-priority-stream) and --warmup >= 1"));
  }

  // One step's two phases; the graphs record exactly these.
  auto forward = [&] {
    ForwardResult r = (*model)->Forward(b, false);
    return r.loss_sum / static_cast<double>(std::max<int64_t>(1, r.num_targets));
  };
  auto backward = [&](const at::Tensor& loss) {
    if (opt_in_bwd) (*opt)->BeginStepInBackward(1e-5);
    loss.backward();
    if (opt_in_bwd) {
      (*opt)->FinishStepInBackward();
    } else {
      (*opt)->Step(1e-5);
      (*opt)->ZeroGrad();
    }
  };
  std::unique_ptr<CudaGraphStep> graphed;

  std::vector<double> fwd, bwd, tot;
  std::vector<double> losses;
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  for (int64_t i = 0; i < warmup + steps; ++i) {
    if (i == warmup) {
      ResetPeakMemory();  // the capture's allocations count: the graphs replay into that memory
      if (cuda_graph) {
        DeviceSynchronize();
        auto g = CudaGraphStep::Capture(forward, backward);
        if (!g.ok()) return Fail(g.status());
        graphed = std::move(*g);
      }
    }
    DeviceSynchronize();
    auto t0 = now();
    at::Tensor loss;
    if (graphed) {
      graphed->ReplayForward();
      loss = graphed->loss();
    } else {
      loss = forward();
    }
    DeviceSynchronize();
    auto t1 = now();
    losses.push_back(loss.item<double>());
    if (graphed) {
      graphed->ReplayBackward();
    } else if (opt_in_bwd) {
      (*opt)->BeginStepInBackward(1e-5);
      loss.backward();
    } else {
      loss.backward();
    }
    DeviceSynchronize();
    auto t2 = now();
    if (graphed) {
      // The optimizer ran inside the backward graph.
    } else if (opt_in_bwd) {
      (*opt)->FinishStepInBackward();
    } else {
      (*opt)->Step(1e-5);
      (*opt)->ZeroGrad();
    }
    DeviceSynchronize();
    auto t3 = now();
    if (i >= warmup) {
      fwd.push_back(secs(t0, t1));
      bwd.push_back(secs(t1, t2));
      tot.push_back(secs(t0, t3));
    }
  }
  if (!profile_out.empty() && cuda) {
    namespace prof = torch::autograd::profiler;
    using torch::profiler::impl::ActivityType;
    std::set<ActivityType> acts = {ActivityType::CPU, ActivityType::CUDA};
    prof::prepareProfiler(torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::KINETO), acts);
    DeviceSynchronize();
    prof::enableProfiler(torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::KINETO), acts);
    auto p0 = now();
    if (graphed) {
      graphed->ReplayForward();
      graphed->ReplayBackward();
    } else {
      backward(forward());
    }
    DeviceSynchronize();
    const double wall_ms = secs(p0, now()) * 1e3;
    auto result = prof::disableProfiler();
    if (!trace_out.empty()) result->save(trace_out);
    // GPU time per kernel name, summed over the step.
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
    FILE* f = std::fopen(profile_out.c_str(), "w");
    if (f) {
      std::fprintf(f, "profiled step: wall %.1f ms, GPU kernel time %.1f ms (summed over streams)\n", wall_ms, gpu_ms);
      for (size_t i = 0; i < rows.size() && i < 60; ++i) {
        std::fprintf(f, "%8.2f ms %5.1f%%  %s\n", rows[i].first, 100 * rows[i].first / gpu_ms, rows[i].second.c_str());
      }
      std::fclose(f);
    }
  }
  // With graphs, the memory they replay into is their pool's, however it was carved up: count
  // everything still reserved once the unused cached blocks are returned.
  int64_t peak_bytes = PeakMemoryBytes();
  if (graphed) {
    DeviceSynchronize();
    ReleaseCachedMemory();
    peak_bytes = std::max(peak_bytes, ReservedMemoryBytes());
  }
  const double step_s = Median(tot);
  const double tokens = static_cast<double>(batch * seq);
  const double tflops = config->TrainingFlopsPerToken(seq) * tokens / step_s / 1e12;
  std::vector<double> first(losses.begin(), losses.begin() + std::min<size_t>(5, losses.size()));
  for (double& l : first) l = std::round(l * 1e5) / 1e5;
  nlohmann::json j = {{"impl", "ftd"},
                      {"gate", gate},
                      {"ckpt", ckpt},
                      {"layers", config->num_hidden_layers},
                      {"seq", seq},
                      {"batch", batch},
                      {"params", n_params},
                      {"tps", std::round(tokens / step_s)},
                      {"fwd_ms", std::round(Median(fwd) * 1e4) / 10},
                      {"bwd_ms", std::round(Median(bwd) * 1e4) / 10},
                      {"step_ms", std::round(step_s * 1e4) / 10},
                      {"tflops", std::round(tflops * 10) / 10},
                      {"mfu", cuda ? std::round(tflops / 989.0 * 1000) / 1000 : 0.0},
                      {"peak_gib", std::round(peak_bytes / double(1ull << 30) * 100) / 100},
                      {"peak_allocated_gib", std::round(PeakMemoryBytes() / double(1ull << 30) * 100) / 100},
                      {"cuda_graph", graphed != nullptr},
                      {"save_expert_activation", save_expert_act},
                      {"embedding_update_in_lookup", opt_in_bwd && !dense_embedding_grad},
                      {"losses", first},
                      {"device", cuda ? "cuda" : "cpu"},
                      {"optimizer_in_timer", true},
                      {"optimizer_in_backward", opt_in_bwd},
                      {"loss_chunk", loss_chunk},
                      {"sm_carveout", sm_carveout},
                      {"optimizer_sms", optimizer_sms},
                      {"priority_stream", !no_priority_stream},
                      {"blas_lt", blas_lt},
                      {"grad_hint", !no_grad_hint}};
  std::cout << j.dump() << std::endl;
  return 0;
}
