// `ftctl model init` (execs ftd-train init-model: ftctl never links LibTorch) and
// `ftctl model inspect DIR`.
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/cli.h"
#include "client/model_inspect.h"
#include "engine/model/config.h"
#include "engine/model/registry.h"

namespace ftd::client {
namespace {

bool Executable(const std::string& path) { return !path.empty() && ::access(path.c_str(), X_OK) == 0; }

// $FTD_TRAIN_BIN (as ftd-worker), else ftd-train next to this binary, else on PATH; empty when
// none.
std::string FindFtdTrain(const std::string& argv0) {
  if (const char* env = ::getenv("FTD_TRAIN_BIN"); env != nullptr && *env != '\0') return env;
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string me = n > 0 ? std::string(self, static_cast<size_t>(n)) : argv0;
  size_t slash = me.rfind('/');
  if (slash != std::string::npos) {
    std::string sibling = me.substr(0, slash + 1) + "ftd-train";
    if (Executable(sibling)) return sibling;
  }
  if (const char* path = ::getenv("PATH")) {
    for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
      std::string candidate = absl::StrCat(dir, "/ftd-train");
      if (Executable(candidate)) return candidate;
    }
  }
  return "";
}

struct InitArgs {
  std::string preset = "tiny";
  int layers = 0;
  int experts = 0;
  int seed = 0;
  std::string dtype = "bf16";
  std::string out;
};

}  // namespace

void AddModelCommands(CLI::App& app, Cli& cli, const std::string& argv0) {
  auto* model = app.add_subcommand("model", "Model helpers: init (random-init checkpoint), inspect");
  model->require_subcommand(1);
  model->footer("Examples:\n  ftctl model init --preset tiny --out /tmp/tiny\n  ftctl model inspect /tmp/tiny");

  static InitArgs init;
  static std::string argv0_copy;
  argv0_copy = argv0;
  auto* in = model->add_subcommand("init", "Write a random-init HF MoE checkpoint from a preset (runs ftd-train init-model)");
  static const std::string preset_help = absl::StrJoin(engine::PresetNames(), " | ");
  in->add_option("--preset", init.preset, preset_help)->capture_default_str();
  in->add_option("--layers", init.layers, "override the number of layers");
  in->add_option("--experts", init.experts, "override the number of experts");
  in->add_option("--seed", init.seed, "random seed")->capture_default_str();
  in->add_option("--dtype", init.dtype, "bf16 | fp32")->capture_default_str();
  in->add_option("--out", init.out, "output directory")->required();
  in->footer(R"(The presets are ftd-train's: ftctl runs `ftd-train init-model` found in $FTD_TRAIN_BIN, next to
ftctl, or on PATH (ftctl itself has no LibTorch).

Examples:
  ftctl model init --preset tiny --dtype fp32 --out /tmp/tiny
  ftctl model init --preset qwen3-30b-a3b --layers 4 --out /models/qwen3-4l
  ftctl model init --preset moonlight-16b-a3b --layers 4 --out /models/moonlight-4l
  ftctl model init --preset mixtral-8x7b --layers 2 --out /models/mixtral-2l)");
  in->callback([&] {
    cli.action = [&]() -> int {
      std::string bin = FindFtdTrain(argv0_copy);
      if (bin.empty()) {
        return cli.Fail("ftd-train not found (looked at $FTD_TRAIN_BIN, next to ftctl and on PATH); it ships with "
                        "the engine build (cmake -DFTD_WITH_ENGINE=ON)");
      }
      std::vector<std::string> args = {bin, "init-model", "--preset", init.preset, "--seed",
                                       absl::StrCat(init.seed), "--dtype", init.dtype, "--out", init.out};
      if (init.layers > 0) args.insert(args.end(), {"--layers", absl::StrCat(init.layers)});
      if (init.experts > 0) args.insert(args.end(), {"--experts", absl::StrCat(init.experts)});
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      std::cout.flush();
      ::execv(bin.c_str(), argv.data());
      return cli.Fail(absl::StrCat("cannot run ", bin, ": ", std::strerror(errno)));
    };
  });

  static std::string inspect_dir;
  auto* ins = model->add_subcommand("inspect", "Describe an HF checkpoint: family, parameters, experts, dtype, size");
  ins->add_option("dir", inspect_dir, "HF model directory (config.json + *.safetensors)")->required();
  static const std::string inspect_footer = std::string(R"(Reads config.json and the safetensors headers only (no tensor data). For the families ftd
trains ()" + engine::SupportedModelTypes() + R"() the counts are the engine's, from config.json; for others they are
summed from the headers. Active parameters are the non-expert ones plus routed experts x top-k /
experts.

Examples:
  ftctl model inspect /models/Qwen3-30B-A3B
  ftctl model inspect /tmp/tiny -o json)");
  ins->footer(inspect_footer);
  ins->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<OutputFormat> f = cli.Format();
      if (!f.ok()) return cli.Fail(std::string(f.status().message()));
      absl::StatusOr<ModelSummary> s = InspectModel(inspect_dir);
      if (!s.ok()) return cli.Fail(std::string(s.status().message()));
      if (*f == OutputFormat::kJson || *f == OutputFormat::kYaml) {
        PrintStructured(*cli.out, s->ToJson(), *f);
        return kExitOk;
      }
      Table t({"Directory:", s->dir});
      t.AddRow({"Family:", absl::StrCat(s->family, s->architecture.empty() ? "" : " (" + s->architecture + ")",
                                        s->supported ? "" : " - not trained by ftd")});
      t.AddRow({"Layers:", absl::StrCat(s->layers, ", hidden ", s->hidden_size, ", vocab ", s->vocab_size)});
      t.AddRow({"Experts:", s->experts > 0
                                ? absl::StrCat(s->experts, " routed, top-", s->experts_per_token,
                                               s->shared_experts > 0 ? absl::StrCat(", ", s->shared_experts, " shared") : "",
                                               s->moe_intermediate_size > 0 ? absl::StrCat(", ffn ", s->moe_intermediate_size) : "")
                                : "none (dense)"});
      const char* est = s->parameters_estimated ? " (from config.json: no weights)" : "";
      if (s->parameters_source == "none") {
        t.AddRow({"Parameters:", "unknown (no weights, and not a family ftd counts from config.json)"});
      } else {
        t.AddRow({"Parameters:", absl::StrCat(HumanCount(static_cast<double>(s->parameters_total)), " total, ",
                                              HumanCount(static_cast<double>(s->parameters_active)), " active", est)});
      }
      if (s->supported && s->tensor_count > 0 && s->parameters_stored != s->parameters_total) {
        t.AddRow({"Stored:", absl::StrCat(HumanCount(static_cast<double>(s->parameters_stored)),
                                          " in the files (buffers, MTP layers included)")});
      }
      if (!s->config_error.empty()) t.AddRow({"Config:", s->config_error});
      t.AddRow({"Dtype:", s->dtype()});
      t.AddRow({"Weights:", absl::StrCat(s->tensor_count, " tensors in ", s->safetensors_files, " safetensors file(s)")});
      t.AddRow({"Size on disk:", HumanBytes(static_cast<double>(s->size_on_disk))});
      t.Print(*cli.out);
      return kExitOk;
    };
  });
}

}  // namespace ftd::client
