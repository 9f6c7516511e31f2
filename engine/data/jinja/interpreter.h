// The tree-walking interpreter behind Template::Render, and the builtins it calls (internal to
// engine/data/jinja).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/data/jinja/ast.h"
#include "engine/data/jinja/template.h"
#include "engine/data/jinja/value.h"

namespace ftd::data::jinja {

struct Frame {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Frame> parent;
  const Value* Find(const std::string& name) const;
  void Set(const std::string& name, Value value);
};

class Interpreter {
 public:
  Interpreter(const std::vector<std::pair<std::string, Value>>& variables, const RenderOptions& options);

  RenderResult Run(const Node& root);

  // Used by the builtins.
  Value Call(const Value& callee, Args& args);
  Value GetAttr(const Value& object, const std::string& name);
  Value GetItem(const Value& object, const Value& key);
  Value ApplyFilter(const std::string& name, const Value& input, Args& args);
  bool ApplyTest(const std::string& name, const Value& input, Args& args);
  std::time_t Now() const;

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  Flow Exec(const Node& node);
  Flow ExecInner(const Node& node);
  Flow ExecFor(const Node& node);
  Value Eval(const Expr& expr);
  Value EvalInner(const Expr& expr);
  Value Lookup(const std::string& name) const;
  void EvalArgs(const CallArgs& call, Args* args);
  std::string Capture(const Node& body, const std::shared_ptr<Frame>& frame);
  Value CallMacro(const Node& macro, const std::shared_ptr<Frame>& defined_in, Args& args);
  void Assign(const Node& node, Value value);
  // A new scope under `parent` with `node.scope_undefined` set.
  std::shared_ptr<Frame> NewScope(const Node& node, std::shared_ptr<Frame> parent);
  // Applies a filter block's or set block's filter chain (innermost input null) to `input`.
  Value ApplyFilterChain(const Expr& chain, Value input);

  // Makes `frame` current until destroyed (exceptions included).
  class FrameSwap {
   public:
    FrameSwap(Interpreter* in, std::shared_ptr<Frame> frame) : in_(in), saved_(std::move(in->frame_)) {
      in_->frame_ = std::move(frame);
    }
    ~FrameSwap() { in_->frame_ = std::move(saved_); }
    FrameSwap(const FrameSwap&) = delete;
    FrameSwap& operator=(const FrameSwap&) = delete;

   private:
    Interpreter* in_;
    std::shared_ptr<Frame> saved_;
  };

  std::shared_ptr<Frame> frame_;
  std::string* out_ = nullptr;
  RenderResult result_;
  RenderOptions options_;
  int loop_depth_ = 0;
  int call_depth_ = 0;
};

// builtins.cc
Value CallFilter(Interpreter& in, const std::string& name, const Value& input, Args& args);
bool CallTest(Interpreter& in, const std::string& name, const Value& input, Args& args);
bool HasFilter(const std::string& name);
bool HasTest(const std::string& name);
// A str/dict/list method bound to `receiver`, or Undefined (unknown or unsafe in the sandbox).
Value BoundMethod(const Value& receiver, const std::string& name);
// range, dict, namespace, raise_exception, strftime_now, ...; Undefined when not a global.
Value GlobalFunction(const std::string& name);
Value BinaryOp(const std::string& op, const Value& a, const Value& b);
bool Contains(const Value& container, const Value& item);
// Python iteration: list items, dict keys, str characters; Undefined is empty.
std::vector<Value> Iterate(const Value& value);
Value MakeLoopObject(std::shared_ptr<std::vector<Value>> items, size_t index, int depth);

}  // namespace ftd::data::jinja
