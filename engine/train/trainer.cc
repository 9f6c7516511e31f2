#include "engine/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <regex>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/train/lr_schedule.h"
#include "engine/train/optimizer.h"
#include "engine/train/token_dataset.h"
#include "engine/util/device_memory.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace fs = std::filesystem;
namespace {

constexpr double kPeakTflops = 989.0;  // H100/H200 dense bf16, DESIGN.md's MFU denominator

struct ResumePoint {
  std::string dir;
  int64_t step = 0;
  DataPosition position;
};

// The newest OUTPUT/checkpoint-N that has a complete training state.
std::optional<ResumePoint> FindResumePoint(const std::string& output) {
  std::optional<ResumePoint> best;
  std::error_code ec;
  if (!fs::is_directory(output, ec)) return best;
  static const std::regex kName("checkpoint-([0-9]+)");
  for (const auto& entry : fs::directory_iterator(output, ec)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (!std::regex_match(name, m, kName)) continue;
    auto state = ReadFileToString((entry.path() / "training_state" / "trainer_state.json").string());
    if (!state.ok()) continue;
    auto j = nlohmann::json::parse(*state, nullptr, false);
    if (j.is_discarded()) continue;
    ResumePoint p{entry.path().string(), j.value("step", int64_t{0}),
                  {j.value("epoch", int64_t{0}), j.value("index", int64_t{0})}};
    if (!best || p.step > best->step) best = p;
  }
  return best;
}

void PruneCheckpoints(const std::string& output, int64_t keep_last) {
  if (keep_last <= 0) return;
  static const std::regex kName("checkpoint-([0-9]+)");
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output, ec)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, kName)) found.emplace_back(std::stoll(m[1]), entry.path());
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + keep_last < found.size(); ++i) (void)RemoveTree(found[i].second.string());
}

void CopyTokenizerFiles(const std::string& from, const std::string& to) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                           "special_tokens_map.json", "chat_template.jinja"}) {
    std::error_code ec;
    fs::path src = fs::path(from) / name;
    if (fs::exists(src, ec)) fs::copy_file(src, fs::path(to) / name, fs::copy_options::overwrite_existing, ec);
  }
}

}  // namespace

absl::StatusOr<std::string> RunTraining(const TrainSpec& spec, const TrainOptions& options, std::ostream& log) {
  FTD_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(spec.base_model));
  const bool cuda = spec.device == "cuda" || (spec.device == "auto" && at::hasCUDA());
  if (spec.device == "cuda" && !at::hasCUDA()) return absl::FailedPreconditionError("device: cuda requested but no GPU is visible");
  ModelOptions mo;
  mo.device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  mo.dtype = spec.dtype == "bf16" ? at::kBFloat16 : spec.dtype == "fp32" ? at::kFloat : (cuda ? at::kBFloat16 : at::kFloat);
  mo.gate = spec.gate == "balanced" ? GateMode::kBalanced : GateMode::kReal;
  mo.activation_checkpointing = spec.activation_checkpointing;
  if (spec.ep_size != 1) return absl::UnimplementedError("parallelism.ep_size > 1 needs a distributed launch (WORLD_SIZE > 1)");
  const at::ScalarType save_dtype = DtypeFromName(config.dtype);
  FTD_ASSIGN_OR_RETURN(PrecisionPolicy policy, ParsePrecisionPolicy(spec.precision));

  // Data.
  FTD_ASSIGN_OR_RETURN(std::vector<TokenSequence> data, ReadTokenJsonl(spec.train_data, config.vocab_size));
  const int64_t per_step = spec.global_batch;
  if (per_step % spec.micro_batch != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hyperparameters.global_batch (", spec.global_batch,
                                                   ") must be a multiple of micro_batch (", spec.micro_batch, ")"));
  }
  const int64_t total_steps =
      spec.max_steps > 0 ? spec.max_steps
                         : spec.epochs * ((static_cast<int64_t>(data.size()) + per_step - 1) / per_step);
  FTD_ASSIGN_OR_RETURN(LrSchedule schedule, LrSchedule::Create(spec.schedule, spec.lr, spec.warmup_steps, total_steps));

  // Weights: the newest resumable checkpoint, else the base model.
  std::optional<ResumePoint> resume = options.resume ? FindResumePoint(spec.output) : std::nullopt;
  const std::string weights_dir = resume ? resume->dir : spec.base_model;
  FTD_ASSIGN_OR_RETURN(ModelWeights weights, LoadHfWeights(weights_dir, config, mo));
  EnableGradients(weights);
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<MoeTransformer> model, MoeTransformer::Create(config, mo, std::move(weights)));
  std::vector<NamedParam> params = model->Parameters();
  AdamWConfig adam{spec.adam_beta1, spec.adam_beta2, spec.adam_eps, spec.weight_decay};
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<AdamW> optimizer, AdamW::Create(params, policy, adam));

  int64_t step = 0;
  DataPosition position;
  if (resume) {
    FTD_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(resume->dir + "/training_state/optimizer.safetensors"));
    FTD_RETURN_IF_ERROR(optimizer->LoadState(*reader, resume->step));
    step = resume->step;
    position = resume->position;
    log << "resumed from " << resume->dir << " at step " << step << " (epoch " << position.epoch << ", sample "
        << position.index << ")\n";
  } else if (options.resume) {
    log << "no checkpoint to resume under " << spec.output << "; starting from " << spec.base_model << "\n";
  }
  std::error_code ec;
  fs::create_directories(spec.output, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create output ", spec.output, ": ", ec.message()));

  const int64_t params_total = config.TotalParameters();
  log << absl::StrFormat("model %s: %d layers, %d experts (top-%d), %.1fM parameters (%.1fM active); "
                         "device %s, dtype %s, precision %s, gate %s; %d samples, %d steps\n",
                         config.model_type, config.num_hidden_layers, config.num_experts,
                         config.num_experts_per_tok, params_total / 1e6, config.ActiveParameters() / 1e6,
                         cuda ? "cuda" : "cpu", DtypeName(mo.dtype), spec.precision, spec.gate, data.size(),
                         total_steps);
  log.flush();

  SampleOrder order(static_cast<int64_t>(data.size()), spec.seed);
  std::string last_checkpoint;
  auto save = [&](int64_t at_step) -> absl::Status {
    std::string dir = absl::StrCat(spec.output, "/checkpoint-", at_step);
    FTD_RETURN_IF_ERROR(SaveHfCheckpoint(dir, config, model->weights(), mo, save_dtype));
    // The resumable state beside the HF files (optimizer moments, masters, data position).
    std::string state_dir = dir + "/training_state";
    fs::create_directories(state_dir, ec);
    FTD_RETURN_IF_ERROR(SaveSafetensors(state_dir, optimizer->StateTensors()));
    fs::rename(state_dir + "/model.safetensors", state_dir + "/optimizer.safetensors", ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot write ", state_dir, ": ", ec.message()));
    nlohmann::json st = {{"step", at_step}, {"epoch", position.epoch}, {"index", position.index},
                         {"seed", spec.seed}, {"total_steps", total_steps}};
    FTD_RETURN_IF_ERROR(WriteFileAtomically(state_dir + "/trainer_state.json", st.dump(2)));
    CopyTokenizerFiles(spec.base_model, dir);
    PruneCheckpoints(spec.output, spec.keep_last);
    last_checkpoint = dir;
    log << "checkpoint " << dir << "\n";
    return absl::OkStatus();
  };

  int64_t steps_this_run = 0;
  while (step < total_steps) {
    auto t0 = std::chrono::steady_clock::now();
    if (cuda) ResetPeakMemory();
    std::vector<int64_t> ids = order.Take(per_step, &position);
    std::vector<MicroBatchTensors> micro;
    int64_t targets_total = 0, tokens = 0;
    for (int64_t m = 0; m < per_step / spec.micro_batch; ++m) {
      std::vector<const TokenSequence*> seqs;
      for (int64_t i = 0; i < spec.micro_batch; ++i) seqs.push_back(&data[ids[m * spec.micro_batch + i]]);
      MicroBatchTensors mb = CollateMicroBatch(seqs, spec.seq_len);
      targets_total += mb.targets.ne(-100).sum().item<int64_t>();
      tokens += mb.input_ids.numel();
      micro.push_back(std::move(mb));
    }
    double loss_value = 0;
    const double num_micro = static_cast<double>(micro.size());
    for (MicroBatchTensors& mb : micro) {
      Batch batch{mb.input_ids.to(mo.device), mb.targets.to(mo.device), {}, {}};
      ForwardResult fr = model->Forward(batch, /*return_logits=*/false);
      // Mean over every valid target of the global batch, as one big batch would give.
      at::Tensor loss = fr.loss_sum / static_cast<double>(std::max<int64_t>(1, targets_total));
      if (fr.aux_loss.defined()) loss = loss + config.router_aux_loss_coef * fr.aux_loss / num_micro;
      loss.backward();
      loss_value += loss.item<double>();
    }
    const double grad_norm = ClipGradNorm(params, spec.grad_clip);
    const double lr = schedule.At(step);
    optimizer->Step(lr);
    optimizer->ZeroGrad();
    ++step;
    ++steps_this_run;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    StepReport r;
    r.step = step;
    r.total_steps = total_steps;
    r.loss = loss_value;
    r.grad_norm = grad_norm;
    r.lr = lr;
    r.tokens = tokens;
    r.step_seconds = seconds;
    r.tokens_per_second = tokens / seconds;
    r.tflops_per_gpu = config.TrainingFlopsPerToken(spec.seq_len) * tokens / seconds / 1e12;
    r.mfu = cuda ? r.tflops_per_gpu / kPeakTflops : 0.0;
    r.epoch = position.epoch;
    r.peak_memory_bytes = cuda ? PeakMemoryBytes() : 0;
    if (spec.log_every > 0 && (step % spec.log_every == 0 || step == total_steps)) {
      log << absl::StrFormat("step %d/%d loss %.6f grad_norm %.4f lr %.3e tokens/s %.1f step_time %.3fs\n", step,
                             total_steps, r.loss, r.grad_norm, r.lr, r.tokens_per_second, r.step_seconds);
      log.flush();
    }
    if (options.on_step) options.on_step(r);
    const bool last = step == total_steps;
    if (last || (spec.checkpoint_every > 0 && step % spec.checkpoint_every == 0)) FTD_RETURN_IF_ERROR(save(step));
    if (options.stop_after > 0 && steps_this_run >= options.stop_after && !last) {
      if (spec.checkpoint_every <= 0 || step % spec.checkpoint_every != 0) FTD_RETURN_IF_ERROR(save(step));
      log << "stopping after " << steps_this_run << " steps as asked\n";
      break;
    }
  }
  if (last_checkpoint.empty()) last_checkpoint = absl::StrCat(spec.output, "/checkpoint-", step);
  return last_checkpoint;
}

}  // namespace ftd::engine
