// ftctl's parts without a server: the job file (fields, types, lines, --set), the progress
// line and ETA, YAML output, `model inspect` on a hand-written HF directory (config.json and
// safetensors headers byte by byte) and `model init`'s hand-off to ftd-train.
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/job_file.h"
#include "client/model_inspect.h"
#include "client/output.h"
#include "client/progress_line.h"

namespace ftd::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class Scratch {
 public:
  Scratch() {
    char tmpl[] = "/tmp/ftctl-unit-XXXXXX";
    root_ = ::mkdtemp(tmpl);
  }
  ~Scratch() { std::system(absl::StrCat("rm -rf '", root_, "'").c_str()); }
  const std::string& root() const { return root_; }
  void Write(const std::string& name, const std::string& bytes) const {
    std::ofstream(root_ + "/" + name, std::ios::binary) << bytes;
  }

 private:
  std::string root_;
};

TEST(JobFileTest, FieldsLinesAndSets) {
  const std::string text =
      "base_model: /m\n"            // 1
      "datasets:\n"                 // 2
      "  train: /d/t.jsonl\n"       // 3
      "hyperparameters:\n"          // 4
      "  maxSteps: 100\n"           // 5 (JSON name)
      "  lr: 1e-5\n"                // 6
      "parallelism:\n"              // 7
      "  activation_checkpointing: yes\n"  // 8
      "labels: {team: nlp}\n"       // 9
      "request_id: r-1\n";          // 10
  auto jf = JobFile::Parse(text, "job.yaml", {"hyperparameters.seq_len=4096", "labels.owner=ana", "spec.output=/o"});
  ASSERT_TRUE(jf.ok()) << jf.status();
  const auto& req = jf->request();
  EXPECT_EQ(req.spec().base_model(), "/m");
  EXPECT_EQ(req.spec().hyperparameters().max_steps(), 100);
  EXPECT_DOUBLE_EQ(req.spec().hyperparameters().lr(), 1e-5);
  EXPECT_EQ(req.spec().hyperparameters().seq_len(), 4096);
  EXPECT_TRUE(req.spec().parallelism().activation_checkpointing());
  EXPECT_EQ(req.spec().output(), "/o");
  EXPECT_EQ(req.labels().at("team"), "nlp");
  EXPECT_EQ(req.labels().at("owner"), "ana");
  EXPECT_EQ(req.request_id(), "r-1");

  bool exact = false;
  EXPECT_EQ(jf->Locate("spec.hyperparameters.lr", &exact), "job.yaml:6");
  EXPECT_TRUE(exact);
  EXPECT_EQ(jf->Locate("spec.hyperparameters.max_steps"), "job.yaml:5");
  EXPECT_EQ(jf->Locate("spec.hyperparameters.warmup_steps", &exact), "job.yaml:4");
  EXPECT_FALSE(exact);
  EXPECT_EQ(jf->Locate("spec.hyperparameters.seq_len"), "--set hyperparameters.seq_len=4096");
  EXPECT_EQ(jf->Locate("labels[team]"), "job.yaml:9");
  EXPECT_EQ(jf->Locate("spec.resources.nodes"), "job.yaml");
  EXPECT_EQ(jf->Annotate("spec.hyperparameters.lr: too big"), "job.yaml:6: spec.hyperparameters.lr: too big");
  EXPECT_EQ(jf->Annotate("spec.resources.nodes: is required"),
            "job.yaml: spec.resources.nodes: is required (not set in the file)");
  EXPECT_EQ(jf->Annotate("something else went wrong"), "job.yaml: something else went wrong");
}

TEST(JobFileTest, WrappedLayoutAndErrors) {
  auto jf = JobFile::Parse("labels:\n  a: b\nspec:\n  base_model: /m\n  resources:\n    gpus_per_node: 8\n",
                           "w.yaml", {});
  ASSERT_TRUE(jf.ok()) << jf.status();
  EXPECT_EQ(jf->request().spec().resources().gpus_per_node(), 8);
  EXPECT_EQ(jf->Locate("spec.resources.gpus_per_node"), "w.yaml:6");

  auto err = [](const std::string& text, const std::vector<std::string>& sets = {}) {
    auto r = JobFile::Parse(text, "j.yaml", sets);
    return r.ok() ? std::string("ok") : std::string(r.status().message());
  };
  EXPECT_THAT(err("spec: {}\nextra: 1\n"), HasSubstr("j.yaml:2: extra: unknown top-level key"));
  EXPECT_THAT(err("hyperparameters:\n  seq_len: 1.5\n"),
              HasSubstr("j.yaml:2: spec.hyperparameters.seq_len: expected an integer (32-bit), got \"1.5\""));
  EXPECT_THAT(err("hyperparameters:\n  seq_len: 99999999999\n"), HasSubstr("expected an integer (32-bit)"));
  EXPECT_THAT(err("hyperparameters: 3\n"), HasSubstr("j.yaml:1: spec.hyperparameters: expected a mapping"));
  EXPECT_THAT(err("resources:\n  gpus: 8\n"), HasSubstr("j.yaml:2: spec.resources.gpus: unknown field (Resources has: nodes, gpus_per_node)"));
  EXPECT_THAT(err("base_model: [a]\n"), HasSubstr("j.yaml:1: spec.base_model: expected a single value"));
  EXPECT_THAT(err("a: b: c\n"), HasSubstr("j.yaml:1: not valid YAML"));
  EXPECT_THAT(err("- 1\n"), HasSubstr("expected a mapping of JobSpec fields"));
  EXPECT_THAT(err("", {"noequals"}), HasSubstr("--set noequals: expected key=value"));
  EXPECT_THAT(err("", {"resources=3"}), HasSubstr("is a section, not a value"));
  EXPECT_THAT(err("", {"base_model.x=3"}), HasSubstr("is a value, not a section"));
  EXPECT_THAT(err("", {"parallelism.activation_checkpointing=maybe"}), HasSubstr("expected true or false"));
  // An empty file plus --set builds a spec.
  auto only_sets = JobFile::Parse("", "j.yaml", {"base_model=/m", "resources.nodes=2"});
  ASSERT_TRUE(only_sets.ok());
  EXPECT_EQ(only_sets->request().spec().resources().nodes(), 2);
}

// List fields (lora.targets): a YAML list in the file, comma-separated items with --set (which
// replace the file's); items are checked and named by index.
TEST(JobFileTest, ListFields) {
  auto block = JobFile::Parse("method: lora\nlora:\n  targets:\n    - attention\n    - experts\n", "l.yaml", {});
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_THAT(block->request().spec().lora().targets(), ::testing::ElementsAre("attention", "experts"));
  EXPECT_EQ(block->Locate("spec.lora.targets[1]"), "l.yaml:3");
  auto flow = JobFile::Parse("lora: {targets: [mlp]}\n", "l.yaml", {});
  ASSERT_TRUE(flow.ok()) << flow.status();
  EXPECT_THAT(flow->request().spec().lora().targets(), ::testing::ElementsAre("mlp"));
  auto set = JobFile::Parse("lora: {targets: [mlp]}\n", "l.yaml", {"lora.targets=attention, shared_experts"});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_THAT(set->request().spec().lora().targets(), ::testing::ElementsAre("attention", "shared_experts"));

  auto err = [](const std::string& text) {
    auto r = JobFile::Parse(text, "l.yaml", {});
    return r.ok() ? std::string("ok") : std::string(r.status().message());
  };
  EXPECT_THAT(err("lora:\n  targets: attention\n"), HasSubstr("l.yaml:2: spec.lora.targets: expected a list"));
  EXPECT_THAT(err("lora:\n  targets:\n    - attention\n    - {a: b}\n"),
              HasSubstr("l.yaml:4: spec.lora.targets[1]: expected a single value"));
}

TEST(ProgressLineTest, LineAndEta) {
  ftd::v1::JobStatus st;
  st.set_state(ftd::v1::RUNNING);
  st.mutable_progress()->set_step(120);
  st.mutable_progress()->set_total_steps(1000);
  st.mutable_metrics()->set_tokens_per_second_per_gpu(4512);
  st.mutable_metrics()->set_mfu(0.2312);
  st.mutable_metrics()->set_loss(2.34123);
  EXPECT_EQ(ProgressLine("ftj-1", st, 312),
            "ftj-1  RUNNING  step 120/1000 (12%)  4.5k tok/s/GPU  MFU 23.1%  loss 2.3412  ETA 5m12s");
  st.mutable_metrics()->set_eval_loss(2.40104);
  st.mutable_metrics()->set_eval_step(100);
  EXPECT_EQ(ProgressLine("ftj-1", st, 312),
            "ftj-1  RUNNING  step 120/1000 (12%)  4.5k tok/s/GPU  MFU 23.1%  loss 2.3412  eval loss 2.4010  ETA 5m12s");
  st.set_state(ftd::v1::QUEUED);
  st.set_queue_position(2);
  EXPECT_EQ(ProgressLine("ftj-1", st, -1), "ftj-1  QUEUED  queue position 2  waiting for GPUs");

  EtaEstimator eta;
  // Reported step time when nothing was observed yet.
  EXPECT_DOUBLE_EQ(eta.SecondsLeft(10, 110, 0.5), 50);
  EXPECT_DOUBLE_EQ(eta.SecondsLeft(10, 110, 0), -1);
  // Observed: 10 steps in 20 s -> 2 s/step.
  absl::Time t0 = absl::FromUnixSeconds(1000);
  eta.Observe(10, t0);
  eta.Observe(20, t0 + absl::Seconds(20));
  EXPECT_DOUBLE_EQ(eta.SecondsLeft(20, 120, 0.5), 200);
  EXPECT_DOUBLE_EQ(eta.SecondsLeft(120, 120, 0.5), 0);

  EXPECT_EQ(ExitCodeForState(ftd::v1::SUCCEEDED), 0);
  EXPECT_EQ(ExitCodeForState(ftd::v1::FAILED), 3);
  EXPECT_EQ(ExitCodeForState(ftd::v1::CANCELLED), 4);
}

TEST(OutputTest, YamlAndHumanUnits) {
  nlohmann::json j = {{"id", "ftj-1"}, {"step", "12"}, {"flag", true}, {"labels", nlohmann::json::object()},
                      {"list", {1, 2}}, {"no", "no"}};
  const std::string y = ToYaml(j);
  EXPECT_THAT(y, HasSubstr("id: ftj-1"));
  EXPECT_THAT(y, HasSubstr("step: \"12\""));  // an int64 of the JSON mapping stays a string
  EXPECT_THAT(y, HasSubstr("no: \"no\""));
  EXPECT_THAT(y, HasSubstr("labels: {}"));
  EXPECT_EQ(HumanDuration(42), "42s");
  EXPECT_EQ(HumanDuration(3725), "1h02m");
  EXPECT_EQ(HumanCount(30.5e9), "30.50B");
  EXPECT_EQ(HumanBytes(1.5 * 1024 * 1024 * 1024), "1.5 GiB");
  EXPECT_FALSE(ParseOutputFormat("xml").ok());
}

// A safetensors file: 8-byte little-endian header length, JSON header, data.
std::string Safetensors(const nlohmann::json& tensors, size_t data_bytes) {
  std::string header = tensors.dump();
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

TEST(ModelInspectTest, CountsParametersFromHeaders) {
  Scratch s;
  s.Write("config.json", R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
    "hidden_size": 4, "num_hidden_layers": 1, "vocab_size": 10, "num_experts": 4,
    "num_experts_per_tok": 2, "moe_intermediate_size": 2, "torch_dtype": "bfloat16"})");
  // Shard 1: embeddings (10x4 = 40) and a router (4x4 = 16); shard 2: 4 experts of 3 x (2x4) = 96.
  nlohmann::json h1 = {{"__metadata__", {{"format", "pt"}}},
                       {"model.embed_tokens.weight", {{"dtype", "BF16"}, {"shape", {10, 4}}, {"data_offsets", {0, 80}}}},
                       {"model.layers.0.mlp.gate.weight", {{"dtype", "F32"}, {"shape", {4, 4}}, {"data_offsets", {80, 144}}}}};
  s.Write("model-00001-of-00002.safetensors", Safetensors(h1, 144));
  nlohmann::json h2;
  size_t off = 0;
  for (int e = 0; e < 4; ++e) {
    for (const char* p : {"gate_proj", "up_proj", "down_proj"}) {
      h2[absl::StrCat("model.layers.0.mlp.experts.", e, ".", p, ".weight")] = {
          {"dtype", "BF16"}, {"shape", {2, 4}}, {"data_offsets", {off, off + 16}}};
      off += 16;
    }
  }
  s.Write("model-00002-of-00002.safetensors", Safetensors(h2, off));
  auto m = InspectModel(s.root());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->family, "Qwen3-MoE");
  EXPECT_EQ(m->layers, 1);
  EXPECT_EQ(m->experts, 4);
  EXPECT_EQ(m->experts_per_token, 2);
  EXPECT_EQ(m->tensor_count, 2 + 12);
  EXPECT_EQ(m->safetensors_files, 2);
  EXPECT_EQ(m->parameters_total, 40 + 16 + 96);
  EXPECT_EQ(m->expert_parameters, 96);
  EXPECT_EQ(m->parameters_active, 40 + 16 + 96 * 2 / 4);
  EXPECT_EQ(m->dtype(), "BF16");
  EXPECT_FALSE(m->parameters_estimated);
  EXPECT_GT(m->size_on_disk, 144 + 192);

  // A truncated header is reported with the file's name.
  s.Write("broken.safetensors", std::string("\xff\xff\x00\x00\x00\x00\x00\x00{", 9));
  auto broken = InspectModel(s.root());
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(broken.status().message(), HasSubstr("broken.safetensors: header length"));
}

TEST(ModelInspectTest, EstimatesWithoutWeightsAndRejectsNonModels) {
  Scratch s;
  // Qwen3-30B-A3B's config: about 30.5B total, 3.3B active.
  s.Write("config.json", R"({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
    "vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
    "num_experts_per_tok": 8, "tie_word_embeddings": false})");
  auto m = InspectModel(s.root());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->parameters_estimated);
  EXPECT_NEAR(m->parameters_total / 1e9, 30.5, 0.2);
  EXPECT_NEAR(m->parameters_active / 1e9, 3.3, 0.1);
  EXPECT_FALSE(InspectModel(s.root() + "/absent").ok());
  Scratch empty;
  auto none = InspectModel(empty.root());
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("config.json"));
}

TEST(ModelInspectTest, DeepseekV3CountsAreTheEnginesAndOtherFamiliesAreNamedUnsupported) {
  Scratch s;
  // Moonlight-16B-A3B's config.json: MLA without q_lora_rank, 2 shared experts, a dense first
  // layer; counted by the engine's DeepSeek-V3 layout (engine/model/tensor_layout.h).
  s.Write("config.json", R"({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 163840, "hidden_size": 2048, "intermediate_size": 11264, "moe_intermediate_size": 1408,
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
    "n_routed_experts": 64, "routed_scaling_factor": 2.446, "kv_lora_rank": 512, "q_lora_rank": null,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "n_group": 1, "topk_group": 1,
    "num_experts_per_tok": 6, "first_k_dense_replace": 1, "norm_topk_prob": true, "rope_theta": 50000.0,
    "max_position_embeddings": 8192, "num_nextn_predict_layers": 0, "torch_dtype": "bfloat16"})");
  auto m = InspectModel(s.root());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->family, "DeepSeek-V3");
  EXPECT_TRUE(m->supported);
  EXPECT_EQ(m->experts, 64);
  EXPECT_EQ(m->shared_experts, 2);
  EXPECT_EQ(m->parameters_total, 15960108544);  // as ftd-train and the coordinator's plan count
  EXPECT_EQ(m->parameters_active, 2914774528);
  EXPECT_EQ(m->parameters_source, "family layout (config.json)");
  EXPECT_TRUE(m->parameters_estimated);

  Scratch other;
  other.Write("config.json", R"({"model_type": "granitemoe", "hidden_size": 64, "num_hidden_layers": 2,
    "vocab_size": 100, "num_local_experts": 4, "num_experts_per_tok": 2})");
  auto granite = InspectModel(other.root());
  ASSERT_TRUE(granite.ok()) << granite.status();
  EXPECT_EQ(granite->family, "Granite-MoE");
  EXPECT_FALSE(granite->supported);
  EXPECT_EQ(granite->parameters_total, 0);  // no weights and no layout to count from
  EXPECT_EQ(granite->parameters_source, "none");
}

TEST(ModelInspectTest, MixtralQwen2MoeOlmoeGptOssAndNemotronHAreNamedAndCountedAsPublished) {
  // The config.json files as published (v4 field names), without weights: the engine's counts.
  struct Case {
    const char* config;
    const char* family;
    double total_b, active_b;  // as the model cards give them
  };
  const Case cases[] = {
      {R"({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
          "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2,
          "rope_theta": 1e6, "sliding_window": null, "router_aux_loss_coef": 0.02, "torch_dtype": "bfloat16"})",
       "Mixtral", 46.7, 12.9},
      {R"({"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
          "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
          "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936, "num_experts": 60,
          "num_experts_per_tok": 4, "use_sliding_window": false, "sliding_window": 32768})",
       "Qwen2-MoE", 14.3, 2.7},
      {R"({"model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
          "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 50304, "num_experts": 64,
          "num_experts_per_tok": 8, "clip_qkv": null, "norm_topk_prob": false})",
       "OLMoE", 6.9, 1.3},
      // openai/gpt-oss-20b's config.json (its quantization_config left out): 20.9B total as the
      // model card; active 4.19B counts the input embedding (0.58B), which the card's 3.6B does not.
      {R"({"model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "attention_bias": true,
          "head_dim": 64, "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
          "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 201088, "num_local_experts": 32,
          "num_experts_per_tok": 4, "experts_per_token": 4, "sliding_window": 128, "swiglu_limit": 7.0,
          "rope_theta": 150000, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
          "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
          "router_aux_loss_coef": 0.9, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05})",
       "GPT-OSS", 20.91, 4.19},
      // nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16's config.json (no num_hidden_layers field needed:
      // the 52 layers come from its pattern): 31.58B as transformers counts it; 3.58B active.
      {R"({"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "hidden_size": 2688,
          "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME", "head_dim": 128,
          "intermediate_size": 1856, "layer_norm_epsilon": 1e-05, "mamba_head_dim": 64, "mamba_num_heads": 64,
          "mlp_hidden_act": "relu2", "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712,
          "n_group": 1, "n_groups": 8, "n_routed_experts": 128, "n_shared_experts": 1, "norm_topk_prob": true,
          "num_attention_heads": 32, "num_experts_per_tok": 6, "num_key_value_heads": 2,
          "routed_scaling_factor": 2.5, "ssm_state_size": 128, "topk_group": 1, "vocab_size": 131072,
          "chunk_size": 128, "conv_kernel": 4, "use_conv_bias": true, "torch_dtype": "bfloat16"})",
       "Nemotron-H", 31.58, 3.58},
  };
  for (const Case& c : cases) {
    Scratch s;
    s.Write("config.json", c.config);
    auto m = InspectModel(s.root());
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->family, c.family);
    EXPECT_TRUE(m->supported) << c.family;
    EXPECT_TRUE(m->parameters_estimated) << c.family;
    EXPECT_NEAR(m->parameters_total / 1e9, c.total_b, 0.05) << c.family;
    EXPECT_NEAR(m->parameters_active / 1e9, c.active_b, 0.05) << c.family;
    if (std::string(c.family) == "Nemotron-H") EXPECT_EQ(m->layers, 52);
  }
}

int RunFtctl(const std::string& args, const std::string& env, std::string* out) {
  const std::string file = "/tmp/ftctl-unit-out-" + std::to_string(::getpid());
  int rc = std::system(absl::StrCat(env, " ", FTD_BIN_DIR, "/ftctl ", args, " > ", file, " 2>&1").c_str());
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  ::unlink(file.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(ModelCommandsTest, InitExecsFtdTrainAndInspectPrints) {
  Scratch s;
  // A stand-in ftd-train that records its arguments: ftctl hands init over with exec.
  const std::string fake = s.root() + "/ftd-train";
  s.Write("ftd-train", "#!/bin/sh\necho \"ftd-train $*\"\nexit 7\n");
  ::chmod(fake.c_str(), 0755);
  std::string out;
  int rc = RunFtctl("model init --preset qwen3-30b-a3b --layers 2 --dtype fp32 --out /tmp/x",
                    "FTD_TRAIN_BIN=" + fake, &out);
  EXPECT_EQ(rc, 7);
  EXPECT_THAT(out, HasSubstr("ftd-train init-model --preset qwen3-30b-a3b --seed 0 --dtype fp32 --out /tmp/x --layers 2"));
  rc = RunFtctl(absl::StrCat("model init --dtype fp32 --out ", s.root(), "/x"), "FTD_TRAIN_BIN= PATH=/nonexistent", &out);
  // Found next to ftctl in an engine build; otherwise a clear error.
  if (::access((std::string(FTD_BIN_DIR) + "/ftd-train").c_str(), X_OK) != 0) {
    EXPECT_EQ(rc, 1);
    EXPECT_THAT(out, HasSubstr("ftd-train not found"));
  }

  s.Write("config.json", R"({"model_type": "granitemoe", "architectures": ["GraniteMoeForCausalLM"], "hidden_size": 8,
    "num_hidden_layers": 2, "vocab_size": 16, "num_attention_heads": 2, "num_local_experts": 8,
    "num_experts_per_tok": 2, "intermediate_size": 16})");
  ASSERT_EQ(RunFtctl(absl::StrCat("model inspect ", s.root()), "", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Granite-MoE (GraniteMoeForCausalLM) - not trained by ftd"));
  EXPECT_THAT(out, HasSubstr("8 routed, top-2"));
  EXPECT_THAT(out, HasSubstr("unknown (no weights"));
  ASSERT_EQ(RunFtctl(absl::StrCat("model inspect ", s.root(), " -o json"), "", &out), 0);
  EXPECT_EQ(nlohmann::json::parse(out)["experts"], 8);
  EXPECT_EQ(RunFtctl("model inspect /nonexistent-dir", "", &out), 1);
  EXPECT_THAT(out, HasSubstr("ftctl: /nonexistent-dir: not a directory"));

  // With a real engine build next to ftctl: init a tiny model, then inspect it.
  if (::access((std::string(FTD_BIN_DIR) + "/ftd-train").c_str(), X_OK) == 0) {
    const std::string dir = s.root() + "/tiny";
    ASSERT_EQ(RunFtctl(absl::StrCat("model init --preset tiny --dtype fp32 --out ", dir), "", &out), 0) << out;
    ASSERT_EQ(RunFtctl(absl::StrCat("model inspect ", dir, " -o json"), "", &out), 0) << out;
    nlohmann::json j = nlohmann::json::parse(out);
    EXPECT_GT(j["parameters_total"].get<int64_t>(), j["parameters_active"].get<int64_t>());
    EXPECT_EQ(j["dtype"], "F32");
    // A DeepSeek-V3 preset: named, counted as the engine counts it (what init-model printed).
    const std::string ds = s.root() + "/tiny-ds";
    ASSERT_EQ(RunFtctl(absl::StrCat("model init --preset tiny-deepseek-v3 --dtype fp32 --out ", ds), "", &out), 0)
        << out;
    EXPECT_THAT(out, HasSubstr("(DeepSeek-V3)"));
    ASSERT_EQ(RunFtctl(absl::StrCat("model inspect ", ds), "", &out), 0) << out;
    EXPECT_THAT(out, HasSubstr("DeepSeek-V3 (DeepseekV3ForCausalLM)"));
    EXPECT_THAT(out, HasSubstr("8 routed, top-2, 2 shared"));
    ASSERT_EQ(RunFtctl(absl::StrCat("model inspect ", ds, " -o json"), "", &out), 0) << out;
    j = nlohmann::json::parse(out);
    EXPECT_EQ(j["family"], "DeepSeek-V3");
    EXPECT_TRUE(j["supported"].get<bool>());
    // The stored tensors hold the same parameters plus the selection biases (buffers).
    EXPECT_EQ(j["parameters_stored"].get<int64_t>(), j["parameters_total"].get<int64_t>() + 2 * 8);
    // The Mixtral, Qwen2-MoE and OLMoE presets: named, trained by ftd, counted as stored.
    for (const auto& [preset, named] : std::vector<std::pair<std::string, std::string>>{
             {"tiny-mixtral", "Mixtral (MixtralForCausalLM)"},
             {"tiny-qwen2-moe", "Qwen2-MoE (Qwen2MoeForCausalLM)"},
             {"tiny-olmoe", "OLMoE (OlmoeForCausalLM)"}}) {
      const std::string dir = absl::StrCat(s.root(), "/", preset);
      ASSERT_EQ(RunFtctl(absl::StrCat("model init --preset ", preset, " --dtype fp32 --out ", dir), "", &out), 0)
          << out;
      ASSERT_EQ(RunFtctl(absl::StrCat("model inspect ", dir), "", &out), 0) << out;
      EXPECT_THAT(out, HasSubstr(named));
      EXPECT_THAT(out, Not(HasSubstr("not trained by ftd")));
      ASSERT_EQ(RunFtctl(absl::StrCat("model inspect ", dir, " -o json"), "", &out), 0) << out;
      j = nlohmann::json::parse(out);
      EXPECT_TRUE(j["supported"].get<bool>()) << preset;
      EXPECT_EQ(j["parameters_stored"].get<int64_t>(), j["parameters_total"].get<int64_t>()) << preset;
    }
  }
}

}  // namespace
}  // namespace ftd::client
