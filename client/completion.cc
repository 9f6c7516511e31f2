// `ftctl completion bash|zsh`: completion scripts generated from the command tree itself, so
// they never drift from the flags. Job ids complete from `ftctl list -o name`.
#include <functional>
#include <iostream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "client/cli.h"
#include "engine/model/config.h"

namespace ftd::client {
namespace {

struct Node {
  std::string path;  // "/model/init"
  std::string description;
  std::vector<std::pair<std::string, std::string>> children;  // name, description
  std::vector<std::string> flags;
};

void Collect(const CLI::App* app, const std::string& path, std::vector<Node>* nodes) {
  Node n;
  n.path = path;
  n.description = app->get_description();
  for (const CLI::App* sub : app->get_subcommands([](const CLI::App*) { return true; })) {
    n.children.emplace_back(sub->get_name(), sub->get_description());
  }
  for (const CLI::Option* o : app->get_options()) {
    for (const std::string& l : o->get_lnames()) n.flags.push_back("--" + l);
    for (const std::string& s : o->get_snames()) n.flags.push_back("-" + s);
  }
  nodes->push_back(n);
  for (const CLI::App* sub : app->get_subcommands([](const CLI::App*) { return true; })) {
    Collect(sub, path + "/" + sub->get_name(), nodes);
  }
}

const std::set<std::string> kTakesJobId = {"/get", "/cancel", "/watch", "/logs", "/events", "/checkpoints"};
const char kStates[] = "QUEUED STARTING RUNNING CANCELLING SUCCEEDED FAILED CANCELLED";

std::string Bash(const std::vector<Node>& nodes, const std::vector<std::string>& global_flags) {
  std::vector<std::string> paths;
  for (const Node& n : nodes) {
    if (!n.path.empty()) paths.push_back(n.path);
  }
  std::string s = R"(# bash completion for ftctl; load with: source <(ftctl completion bash)
_ftctl() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmdpath="" w i words=""
  for ((i=1; i<COMP_CWORD; i++)); do
    w=${COMP_WORDS[i]}
    case "$cmdpath/$w" in
      )";
  s += absl::StrJoin(paths, "|") + ") cmdpath=\"$cmdpath/$w\";;\n    esac\n  done\n";
  s += absl::StrCat(R"(  case "$prev" in
    -f|--filename|--config|--ca-cert|--token-file) COMPREPLY=($(compgen -f -- "$cur")); return;;
    --out) COMPREPLY=($(compgen -d -- "$cur")); return;;
    -o|--output) COMPREPLY=($(compgen -W "table json yaml name" -- "$cur")); return;;
    -s|--state) COMPREPLY=($(compgen -W ")", kStates, R"(" -- "$cur")); return;;
    --preset) COMPREPLY=($(compgen -W ")", absl::StrJoin(engine::PresetNames(), " "), R"(" -- "$cur")); return;;
    --dtype) COMPREPLY=($(compgen -W "bf16 fp32" -- "$cur")); return;;
  esac
  case "$cmdpath" in
)");
  const std::string globals = absl::StrJoin(global_flags, " ");
  for (const Node& n : nodes) {
    std::vector<std::string> names;
    for (const auto& c : n.children) names.push_back(c.first);
    std::string w = absl::StrJoin(names, " ");
    absl::StrAppend(&s, "    \"", n.path, "\") words=\"", w, w.empty() ? "" : " ", absl::StrJoin(n.flags, " "),
                    n.path.empty() ? "" : " " + globals, "\"");
    if (kTakesJobId.count(n.path)) {
      s += "\n      [[ $cur != -* ]] && words=\"$words $(\"${COMP_WORDS[0]}\" list -o name --timeout 3 2>/dev/null)\"";
    }
    if (n.path == "/model/inspect") {
      s += "\n      [[ $cur != -* ]] && { COMPREPLY=($(compgen -d -- \"$cur\")); return; }";
    }
    if (n.path == "/completion") s += "\n      words=\"$words bash zsh\"";
    s += ";;\n";
  }
  s += R"(  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _ftctl ftctl
)";
  return s;
}

std::string ZshQuote(const std::string& text) {
  return absl::StrReplaceAll(text, {{"'", "'\\''"}, {":", "\\:"}});
}

std::string Zsh(const std::vector<Node>& nodes, const std::vector<std::string>& global_flags) {
  std::vector<std::string> paths;
  for (const Node& n : nodes) {
    if (!n.path.empty()) paths.push_back(n.path);
  }
  std::string s = R"(#compdef ftctl
# zsh completion for ftctl; load with: source <(ftctl completion zsh)
# (or save as _ftctl in a directory of $fpath)
_ftctl() {
  local cmdpath="" w i prev=${words[CURRENT-1]} cur=${words[CURRENT]}
  local -a cmds flags
  for ((i=2; i<CURRENT; i++)); do
    w=${words[i]}
    case "$cmdpath/$w" in
      )";
  s += absl::StrJoin(paths, "|") + ") cmdpath=\"$cmdpath/$w\";;\n    esac\n  done\n";
  s += absl::StrCat(R"(  case "$prev" in
    -f|--filename|--config|--ca-cert|--token-file) _files; return;;
    --out) _files -/; return;;
    -o|--output) compadd table json yaml name; return;;
    -s|--state) compadd )", kStates, R"(; return;;
    --preset) compadd tiny qwen3-30b-a3b; return;;
    --dtype) compadd bf16 fp32; return;;
  esac
  case "$cmdpath" in
)");
  const std::string globals = absl::StrJoin(global_flags, " ");
  for (const Node& n : nodes) {
    absl::StrAppend(&s, "    \"", n.path, "\")\n      cmds=(");
    for (const auto& [name, desc] : n.children) absl::StrAppend(&s, "'", ZshQuote(name), ":", ZshQuote(desc), "' ");
    absl::StrAppend(&s, ")\n      flags=(", absl::StrJoin(n.flags, " "), n.path.empty() ? "" : " " + globals, ")\n");
    if (kTakesJobId.count(n.path)) {
      s += "      [[ $cur != -* ]] && cmds+=(${(f)\"$(${words[1]} list -o name --timeout 3 2>/dev/null)\"})\n";
    }
    if (n.path == "/model/inspect") s += "      [[ $cur != -* ]] && { _files -/; return; }\n";
    if (n.path == "/completion") s += "      cmds+=(bash zsh)\n";
    s += "      ;;\n";
  }
  s += R"(  esac
  if [[ $cur == -* ]]; then
    compadd -- $flags
  elif (( ${#cmds} )); then
    _describe 'command' cmds
  fi
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _ftctl "$@"
else
  compdef _ftctl ftctl
fi
)";
  return s;
}

}  // namespace

void AddCompletionCommand(CLI::App& app, Cli& cli) {
  static std::string shell;
  auto* comp = app.add_subcommand("completion", "Print a shell completion script (bash or zsh)");
  comp->add_option("shell", shell, "bash | zsh")->required()->check(CLI::IsMember({"bash", "zsh"}));
  comp->footer(R"(Examples:
  source <(ftctl completion bash)          # in ~/.bashrc
  source <(ftctl completion zsh)           # in ~/.zshrc (after compinit)
  ftctl completion zsh > "${fpath[1]}/_ftctl")");
  CLI::App* root = &app;
  comp->callback([&cli, root] {
    cli.action = [&cli, root]() -> int {
      std::vector<Node> nodes;
      Collect(root, "", &nodes);
      std::vector<std::string> global_flags = nodes.front().flags;
      *cli.out << (shell == "bash" ? Bash(nodes, global_flags) : Zsh(nodes, global_flags));
      return kExitOk;
    };
  });
}

}  // namespace ftd::client
