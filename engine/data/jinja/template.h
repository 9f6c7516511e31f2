// A Jinja2 interpreter for chat templates: parses a template once and renders it as
// transformers' apply_chat_template does (jinja2 ImmutableSandboxedEnvironment with
// trim_blocks=True, lstrip_blocks=True, the loopcontrols extension, transformers' tojson,
// raise_exception, strftime_now, dict and namespace globals, and the {% generation %} tag).
//
// Covered: data, {{ }}, {# #}, whitespace control (-, +), raw; statements if/elif/else,
// for (tuple targets, loop filter, else, loop.* variables), break/continue, set (names,
// tuples, namespace attributes, block form), macro (defaults, keyword arguments), filter
// blocks, with, generation; Python expressions (literals, slicing, calls, chained comparisons,
// in/not in, is tests, filters, conditional expressions) with Python semantics; the filters,
// tests and str/dict/list methods that chat templates use. Anything else (include, extends,
// import, call blocks, unknown filters and tests) is an error naming its line and column.
// Only data is reachable: attributes are the data's keys and the listed methods; names
// starting with '_' and mutating methods are undefined, as in the sandbox.
#pragma once

#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/jinja/value.h"

namespace ftd::data::jinja {

struct Node;

struct RenderOptions {
  // The clock for strftime_now() (local time); default: the real clock.
  std::function<std::time_t()> now;
};

struct RenderResult {
  std::string text;
  // Byte ranges [begin, end) of `text` produced inside {% generation %} blocks, in order.
  std::vector<std::pair<size_t, size_t>> generation_spans;
};

class Template {
 public:
  // INVALID_ARGUMENT "chat template line L, column C: ..." on a syntax error.
  static absl::StatusOr<std::shared_ptr<const Template>> Parse(std::string_view source);
  ~Template();

  // `variables` are the template's inputs (messages, tools, add_generation_prompt, ...).
  // INVALID_ARGUMENT naming the line and column of the failing expression; a
  // raise_exception(msg) call gives FAILED_PRECONDITION whose message contains msg.
  absl::StatusOr<RenderResult> Render(const std::vector<std::pair<std::string, Value>>& variables,
                                      const RenderOptions& options = {}) const;

  bool has_generation_blocks() const { return has_generation_; }

 private:
  Template() = default;
  std::unique_ptr<Node> root_;
  bool has_generation_ = false;
};

}  // namespace ftd::data::jinja
