#include "engine/model/core/moe/expert_weight_grad_sink.h"

#include <atomic>

namespace ftd::engine {

namespace {
std::atomic<ExpertWeightGradSink*> g_sink{nullptr};
}  // namespace

void SetExpertWeightGradSink(ExpertWeightGradSink* sink) { g_sink.store(sink); }

ExpertWeightGradSink* CurrentExpertWeightGradSink() { return g_sink.load(); }

}  // namespace ftd::engine
