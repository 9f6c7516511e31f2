// Every field of JobSpec has a consumer: the engine reads it from the spec the worker hands it
// (engine/train/train_spec.cc), or the scheduler, the worker or the webhook notifier acts on it.
// The fields are enumerated by proto reflection, so a field added to jobs.proto fails here
// until something consumes it; the consumer is checked in the source, so deleting the code that
// reads a field fails here too. (Values the engine cannot honour are refused by name: see
// ValidatorTest and tests/python/test_spec_fields.py.)
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "ftd/v1/jobs.pb.h"
#include "google/protobuf/descriptor.h"

namespace ftd::testing {
namespace {

// The leaf fields of `d` as dotted paths (messages descended into).
void LeafFields(const google::protobuf::Descriptor* d, const std::string& prefix, std::vector<std::string>* out) {
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    const std::string path = prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
    if (f->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE && !f->is_map()) {
      LeafFields(f->message_type(), path, out);
    } else {
      out->push_back(path);
    }
  }
}

std::string Source(const std::string& relative) {
  std::ifstream in(std::string(FTD_SOURCE_DIR) + "/" + relative);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Consumer {
  std::string file;    // relative to the source root
  std::string needle;  // what the consumer's code contains for this field
};

// The engine reads `parent.name` with Read(node, "name", "parent", ...) (top level: "";
// hyperparameters: the variable h).
Consumer Engine(const std::string& path) {
  const size_t dot = path.rfind('.');
  const std::string name = dot == std::string::npos ? path : path.substr(dot + 1);
  const std::string parent = dot == std::string::npos ? "" : path.substr(0, dot);
  const std::string parent_arg = parent == "hyperparameters" ? "h" : absl::StrCat("\"", parent, "\"");
  return {"engine/train/train_spec.cc", absl::StrCat("\"", name, "\", ", parent_arg, ",")};
}

std::map<std::string, Consumer> Consumers() {
  std::map<std::string, Consumer> c;
  for (const char* f :
       {"base_model", "datasets.train", "datasets.validation", "datasets.format", "datasets.validation_fraction",
        "method", "hyperparameters.max_steps", "hyperparameters.epochs", "hyperparameters.global_batch",
        "hyperparameters.micro_batch", "hyperparameters.seq_len", "hyperparameters.lr", "hyperparameters.schedule",
        "hyperparameters.warmup_steps", "hyperparameters.weight_decay", "hyperparameters.grad_clip",
        "hyperparameters.seed", "hyperparameters.eval_every", "parallelism.ep_size", "parallelism.zero_stage",
        "parallelism.activation_checkpointing", "parallelism.recompute_expert_grads", "backends.attention", "backends.experts", "backends.dispatcher",
        "backends.gate", "checkpointing.every_n_steps", "checkpointing.keep_last", "output", "precision", "lora.rank", "lora.alpha",
        "lora.dropout", "lora.targets", "lora.use_rslora", "lora.merge", "lora.init_adapter"}) {
    c[f] = Engine(f);
  }
  // The scheduler: gang size and placement, queue order, restarts, the runtime limit.
  c["resources.nodes"] = {"server/scheduler.cc", "resources().nodes()"};
  c["resources.gpus_per_node"] = {"server/scheduler.cc", "resources().gpus_per_node()"};
  c["scheduling.priority"] = {"server/scheduler.cc", "scheduling().priority()"};
  c["scheduling.max_runtime_seconds"] = {"server/scheduler.cc", "scheduling().max_runtime_seconds()"};
  c["scheduling.max_restarts"] = {"server/scheduler.cc", "scheduling().max_restarts()"};
  c["webhook_url"] = {"server/webhook_notifier.cc", "spec().webhook_url()"};
  return c;
}

TEST(SpecFieldsTest, EveryJobSpecFieldHasAConsumer) {
  std::vector<std::string> fields;
  LeafFields(ftd::v1::JobSpec::descriptor(), "", &fields);
  ASSERT_GE(fields.size(), 30u);
  const std::map<std::string, Consumer> consumers = Consumers();
  std::map<std::string, std::string> sources;
  for (const std::string& field : fields) {
    auto it = consumers.find(field);
    if (it == consumers.end()) {
      ADD_FAILURE() << "JobSpec." << field << " has no consumer: make the engine, scheduler or worker act on it "
                    << "(or refuse it in the validator until they do), then list it here";
      continue;
    }
    const Consumer& c = it->second;
    if (!sources.count(c.file)) sources[c.file] = Source(c.file);
    EXPECT_NE(sources[c.file].find(c.needle), std::string::npos)
        << "JobSpec." << field << ": its consumer " << c.file << " no longer contains `" << c.needle << "`";
  }
  // No stale entries: every listed field exists.
  for (const auto& [field, c] : consumers) {
    EXPECT_THAT(fields, ::testing::Contains(field)) << field << " is listed but not a JobSpec field";
  }
}

}  // namespace
}  // namespace ftd::testing
