// Model configuration parsed from a Hugging Face config.json. Families are data: a family
// differs by a few fields (router scoring, q/k norm, which layers are sparse), not by code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::engine {

enum class RouterScoring { kSoftmax, kSigmoid };

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | yarn
  double theta = 10000.0;
  double factor = 1.0;
  // llama3 / yarn parameters.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0.0;  // yarn: 0 means derived from factor
};

struct ModelConfig {
  std::string model_type;     // e.g. "qwen3_moe"
  std::string architecture;   // e.g. "Qwen3MoeForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP layers
  int64_t moe_intermediate_size = 0;  // per expert
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool attention_bias = false;
  bool qk_norm = true;  // Qwen3: RMSNorm over head_dim on q and k
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  // MoE.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  bool norm_topk_prob = false;
  RouterScoring router_scoring = RouterScoring::kSoftmax;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  double router_aux_loss_coef = 0.0;
  bool output_router_logits = false;
  std::string dtype = "float32";  // the checkpoint's dtype (config "dtype"/"torch_dtype")
  // Token ids, kept so that a saved config.json carries them unchanged (-1: null).
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  int64_t pad_token_id = -1;

  // Whether layer `layer` has a sparse MoE block (else a dense MLP), as HF decides it.
  bool IsMoeLayer(int64_t layer) const;
  int64_t NumMoeLayers() const;
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }

  // Parameter counts: all parameters, and those active for one token (top-k experts).
  int64_t TotalParameters() const;
  int64_t ActiveParameters() const;
  // Dense-equivalent training FLOPs per token at sequence length `seq` (DESIGN.md formula).
  double TrainingFlopsPerToken(int64_t seq) const;
};

// Parses config.json text. Unknown model types and missing or ill-typed fields are
// INVALID_ARGUMENT errors naming the field and `source`.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source = "config.json");
// Reads DIR/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);
// config.json text in HF's v5 format, loadable by transformers.
std::string ModelConfigToJson(const ModelConfig& config);

// Named shapes for init-model and the benchmark: "tiny" (CPU-sized) and "qwen3-30b-a3b".
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);
std::vector<std::string> PresetNames();

}  // namespace ftd::engine
