// The decoder of every family: embedding -> layers (GQA or MLA attention, then a MoE block or a
// dense MLP, as the config's layout says) -> norm -> lm_head, with the loss as HF computes it.
// The blocks are engine/model/core/; which of them a layer uses is data of the ModelConfig.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/core/moe/moe_block.h"
#include "engine/model/varlen_attention.h"
#include "engine/model/weights.h"

namespace ftd::engine {

enum class SinkAttentionPath { kAuto, kSdpa, kFlash };

struct ModelOptions {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;   // parameter and activation dtype
  GateMode gate = GateMode::kReal;
  bool activation_checkpointing = false;
  // The experts this rank holds: [expert_begin, expert_begin + expert_count). -1: all.
  int64_t expert_begin = 0;
  int64_t expert_count = -1;
  // Tokens per chunk of the fused linear cross-entropy (training path, no full logits).
  // 2048: the logits chunk [2048, V] bf16 (622 MB for Qwen3) did not raise the peak at the
  // Qwen3-30B-A3B bench shape, and halved the dW read-modify-writes of 1024 (0.4-0.8 ms a step).
  int64_t loss_chunk_tokens = 2048;
  // Packed batches on CUDA in fp16/bf16 attend through varlen (cu_seqlens) attention; false
  // forces the dense block-causal mask there too (a reference for tests).
  bool varlen_attention = true;
  // CUDA experts: keep the SwiGLU output for backward instead of recomputing it (50 MB a layer
  // at the Qwen3-30B-A3B shape for ~0.06 ms; engine/model/expert_mlp.h).
  bool save_expert_activation = false;
  // CUDA: Mamba2 layers run the causal-conv1d and SSD-scan kernels (kernels/causal_conv1d.h,
  // kernels/ssd_scan.h) instead of HF's chunked ATen form. Off by default: on an H100
  // (2026-12-06) they match the ATen form (NemotronH.CudaKernelsMatchTheAtenPath) but the step is
  // slower with them (Nemotron Nano 3 shape, 6 layers, seq 4096: 152.6 ms against 87.1 ms).
  bool mamba_kernels = false;
  // How layers with attention sinks (GPT-OSS) attend:
  // - kFlash: FlashAttention-2 (core/sink_attention_flash.h), no masks: the sliding window as
  //   the kernel's window, packed rows as varlen sequences. CUDA in fp16/bf16, or the CPU
  //   through a dense reference of the kernel; Forward refuses it elsewhere (CUDA fp32).
  // - kSdpa: SinkAttentionSdpa, each sink one more key, boolean window/document masks.
  // - kAuto (default): kFlash where the kernel serves it on CUDA, else kSdpa. On an H100
  //   (2026-12-06, GPT-OSS-20B shape, 4 layers, seq 4096) kFlash took the step from 121.6 ms to
  //   92.0 ms, and matches fp32 on the CPU as kSdpa does (GptOssCuda tests).
  SinkAttentionPath sink_attention = SinkAttentionPath::kAuto;
};

// One micro-batch. targets are already shifted: targets[b, i] is the token position i
// predicts (-100: no loss), so packed documents and masks need no further shifting.
struct Batch {
  at::Tensor input_ids;     // [B, S] int64
  at::Tensor targets;       // [B, S] int64, -100 = ignore
  at::Tensor position_ids;  // [B, S] int64 or undefined (0..S-1)
  // [B, S] int64 document ids for packed batches, or undefined. A row's documents are
  // contiguous runs of equal ids. May stay on the CPU when the model is on CUDA: the varlen
  // boundaries are computed on the host, so CPU ids spare a device sync per micro-batch.
  at::Tensor segment_ids;
  // The gradient the caller will send into ForwardResult::loss_sum (1/targets for a mean):
  // the fused loss then produces its gradients pre-scaled (linear_cross_entropy.h).
  double loss_grad_scale = 1.0;
  // The caller guarantees that gradient exactly (its loss is loss_sum times that constant), so
  // the fused loss checks nothing on the host (no sync) in backward.
  bool loss_grad_exact = false;
  // Document boundaries computed ahead (on the host, cu_seqlens already on the device), so that
  // Forward copies nothing to the device (required inside a CUDA graph capture); when undefined
  // they are computed from segment_ids.
  VarlenBoundaries varlen = {};
  // Valid targets when the caller knows them (>= 0): Forward then reads nothing back from the
  // device (required while a CUDA graph is captured); -1 counts them, with a host sync.
  int64_t num_targets = -1;
  // The rows the fused loss computes (>= the valid targets; linear_cross_entropy.h): the rows
  // with a target first, so lm_head's GEMMs skip ignored rows. -1: every row.
  int64_t loss_rows = -1;
};

// HF's convention (labels = inputs, shifted inside the loss) as targets.
at::Tensor ShiftLabels(const at::Tensor& labels);

struct ForwardResult {
  at::Tensor logits;         // [B, S, V] fp32, only when asked for
  at::Tensor loss_sum;       // scalar fp32: sum of token cross-entropies over valid targets
  int64_t num_targets = 0;   // valid targets in the batch
  at::Tensor aux_loss;       // scalar fp32 (load balancing), undefined when not configured
  std::vector<at::Tensor> expert_counts;  // per MoE layer, [E]
};

// The residual stream between decoder layers: sum + pending, where pending (a branch's output,
// or undefined) is added by the next norm in the same kernel.
struct ResidualStream {
  at::Tensor sum;      // [B, S, H]
  at::Tensor pending;  // [B, S, H] or undefined
  at::Tensor Materialize() const;
};

// Called by the decoder around each layer, in forward order; both return their tensors as the
// layer should use them (the same values): a hook's autograd nodes run in backward at the
// mirrored points (after the layer's backward for Enter's outputs, before it for Exit's).
class LayerHooks {
 public:
  virtual ~LayerHooks() = default;
  // Before layer `layer` reads `inputs` (the residual stream's tensors).
  virtual std::vector<at::Tensor> Enter(int64_t layer, std::vector<at::Tensor> inputs) = 0;
  // After layer `layer` produced `outputs`.
  virtual std::vector<at::Tensor> Exit(int64_t layer, std::vector<at::Tensor> outputs) = 0;
};

// Whether packed rows of this model attend through the varlen kernel (else through their
// document mask): with attention sinks (GPT-OSS) only where they run SinkAttentionFlash, and
// only where the kernel serves the heads and dtype (MLA included: its V is padded to the q/k
// head size).
bool PackedRowsUseVarlen(const ModelConfig& config, const ModelOptions& options);
// Whether this model's sink layers run SinkAttentionFlash: attention sinks, and
// options.sink_attention kFlash (Forward refuses it where the kernel does not serve the device,
// dtype or heads) or kAuto on CUDA where it serves them.
bool SinkLayersUseFlash(const ModelConfig& config, const ModelOptions& options);

class MoeTransformer {
 public:
  // Weights must already match the config (see hf_checkpoint.h to load or initialise them).
  static absl::StatusOr<std::unique_ptr<MoeTransformer>> Create(const ModelConfig& config,
                                                                const ModelOptions& options,
                                                                ModelWeights weights);

  ForwardResult Forward(const Batch& batch, bool return_logits);

  const ModelConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  ModelWeights& weights() { return weights_; }
  std::vector<NamedParam> Parameters() { return ListParameters(weights_); }
  // The MoE layers' token dispatcher (expert parallelism: the all-to-all one); null restores
  // the local one. Not owned; must outlive the model's use of it.
  void SetTokenDispatcher(TokenDispatcher* dispatcher) {
    dispatcher_ = dispatcher != nullptr ? dispatcher : &local_dispatcher_;
  }
  // Hooks around every decoder layer (ZeRO-3 gathers and frees the layer's parameters there);
  // null: none. Not owned.
  void SetLayerHooks(LayerHooks* hooks) { layer_hooks_ = hooks; }
  // The input embedding's lookup (table, ids) -> [.., H], in place of at::embedding: the
  // optimizer's AdamW::EmbeddingLookup updates the table inside its backward. Ignored when the
  // table is tied to the output projection (it takes a gradient there too).
  using EmbeddingLookup = std::function<at::Tensor(const at::Tensor& table, const at::Tensor& ids)>;
  void SetEmbeddingLookup(EmbeddingLookup lookup) { embedding_lookup_ = std::move(lookup); }

 private:
  MoeTransformer(const ModelConfig& config, const ModelOptions& options, ModelWeights weights);
  // One decoder layer on the residual stream; router logits and counts appended for MoE layers.
  ResidualStream Layer(int64_t index, const ResidualStream& in, const struct AttentionContext& ctx,
                       std::vector<at::Tensor>* router_logits, std::vector<at::Tensor>* counts);

  ModelConfig config_;
  ModelOptions options_;
  ModelWeights weights_;
  at::Tensor inv_freq_;
  double rope_scaling_ = 1.0;
  LocalTokenDispatcher local_dispatcher_;
  TokenDispatcher* dispatcher_ = &local_dispatcher_;
  LayerHooks* layer_hooks_ = nullptr;
  EmbeddingLookup embedding_lookup_;
};

// Checks every tensor of `w` against the config's shapes; errors name the tensor.
absl::Status ValidateWeights(const ModelConfig& config, const ModelOptions& options, const ModelWeights& w);

}  // namespace ftd::engine
