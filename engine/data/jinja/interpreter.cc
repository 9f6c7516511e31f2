#include "engine/data/jinja/interpreter.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace ftd::data::jinja {
namespace {

constexpr int kMaxCallDepth = 200;

// Python's slice.indices(length) for a step that is not 0.
std::vector<int64_t> SliceIndices(int64_t length, const Value& start, const Value& stop, const Value& step_value) {
  const auto as_index = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (!v.is_int() && !v.is_bool()) {
      Fail(absl::StrCat("slice ", what, " must be an integer or None, not ", v.TypeName()));
    }
    return v.as_int();
  };
  const int64_t step = as_index(step_value, "step").value_or(1);
  if (step == 0) Fail("slice step cannot be zero");
  const auto clamp = [&](std::optional<int64_t> index, bool is_start) {
    if (!index) return step > 0 ? (is_start ? int64_t{0} : length) : (is_start ? length - 1 : int64_t{-1});
    int64_t i = *index;
    if (i < 0) {
      i += length;
      if (i < 0) i = step > 0 ? 0 : -1;
    } else if (i >= length) {
      i = step > 0 ? length : length - 1;
    }
    return i;
  };
  const int64_t begin = clamp(as_index(start, "start"), true);
  const int64_t end = clamp(as_index(stop, "stop"), false);
  std::vector<int64_t> out;
  if (step > 0) {
    for (int64_t i = begin; i < end; i += step) out.push_back(i);
  } else {
    for (int64_t i = begin; i > end; i += step) out.push_back(i);
  }
  return out;
}

void Locate(TemplateError& error, const Location& where) {
  if (error.line == 0) {
    error.line = where.line;
    error.column = where.column;
  }
}

}  // namespace

const Value* Frame::Find(const std::string& name) const {
  for (const Frame* f = this; f != nullptr; f = f->parent.get()) {
    for (const auto& [key, value] : f->vars) {
      if (key == name) return &value;
    }
  }
  return nullptr;
}

void Frame::Set(const std::string& name, Value value) {
  for (auto& [key, existing] : vars) {
    if (key == name) {
      existing = std::move(value);
      return;
    }
  }
  vars.emplace_back(name, std::move(value));
}

Interpreter::Interpreter(const std::vector<std::pair<std::string, Value>>& variables, const RenderOptions& options)
    : options_(options) {
  auto context = std::make_shared<Frame>();
  context->vars = variables;
  frame_ = std::move(context);
}

std::shared_ptr<Frame> Interpreter::NewScope(const Node& node, std::shared_ptr<Frame> parent) {
  auto frame = std::make_shared<Frame>();
  frame->parent = std::move(parent);
  for (const auto& name : node.scope_undefined) frame->Set(name, Value::Undefined("'" + name + "' is undefined"));
  return frame;
}

std::time_t Interpreter::Now() const {
  if (options_.now) return options_.now();
  return std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
}

RenderResult Interpreter::Run(const Node& root) {
  out_ = &result_.text;
  frame_ = NewScope(root, frame_);
  const Flow flow = Exec(root);
  if (flow != Flow::kNormal) Fail("'break' or 'continue' outside of a loop");
  return std::move(result_);
}

Value Interpreter::Lookup(const std::string& name) const {
  if (const Value* v = frame_->Find(name)) return *v;
  Value global = GlobalFunction(name);
  if (!global.is_undefined()) return global;
  return Value::Undefined("'" + name + "' is undefined");
}

Value Interpreter::Call(const Value& callee, Args& args) {
  if (callee.is_callable()) return callee.callable().fn(*this, args);
  if (callee.is_undefined()) Fail(callee.str().empty() ? "calling an undefined value" : callee.str());
  Fail("'" + callee.TypeName() + "' object is not callable");
}

Value Interpreter::GetAttr(const Value& object, const std::string& name) {
  switch (object.kind()) {
    case Value::Kind::kUndefined: Fail(object.str().empty() ? "accessing '" + name + "' of an undefined value" : object.str());
    case Value::Kind::kDict: {
      Value method = BoundMethod(object, name);
      if (method.is_callable()) return method;
      if (const Value* v = object.dict().FindStr(name)) return *v;
      if (!method.str().empty()) return method;  // an unsafe method: undefined that says so
      return Value::Undefined("'dict object' has no attribute '" + name + "'");
    }
    case Value::Kind::kString:
    case Value::Kind::kList: {
      Value method = BoundMethod(object, name);
      if (!method.is_undefined() || !method.str().empty()) return method;
      return Value::Undefined("'" + object.TypeName() + " object' has no attribute '" + name + "'");
    }
    case Value::Kind::kObject: return object.object().GetAttr(name);
    default: return Value::Undefined("'" + object.TypeName() + " object' has no attribute '" + name + "'");
  }
}

Value Interpreter::GetItem(const Value& object, const Value& key) {
  switch (object.kind()) {
    case Value::Kind::kUndefined: Fail(object.str().empty() ? "indexing an undefined value" : object.str());
    case Value::Kind::kDict: {
      if (!key.Hashable()) Fail("unhashable type: '" + key.TypeName() + "'");
      if (const Value* v = object.dict().Find(key)) return *v;
      if (key.is_string()) {
        Value method = BoundMethod(object, key.str());
        if (method.is_callable()) return method;
      }
      return Value::Undefined("'dict object' has no attribute " + key.Repr());
    }
    case Value::Kind::kList:
    case Value::Kind::kString: {
      if (object.is_generator() || object.view() != Value::View::kNone) {
        Fail("'" + object.TypeName() + "' object is not subscriptable");
      }
      if (key.is_int() || key.is_bool()) {
        if (object.is_list()) {
          const int64_t n = static_cast<int64_t>(object.list().size());
          int64_t i = key.as_int();
          if (i < 0) i += n;
          if (i < 0 || i >= n) return Value::Undefined(object.TypeName() + " object has no element " + key.Repr());
          return object.list()[i];
        }
        const std::vector<char32_t> cps = ToCodePoints(object.str());
        const int64_t n = static_cast<int64_t>(cps.size());
        int64_t i = key.as_int();
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::Undefined("str object has no element " + key.Repr());
        return Value(FromCodePoints(&cps[i], &cps[i] + 1));
      }
      if (key.is_string()) return GetAttr(object, key.str());
      return Value::Undefined(object.TypeName() + " indices must be integers, not " + key.TypeName());
    }
    case Value::Kind::kObject:
      if (key.is_string()) return object.object().GetAttr(key.str());
      return Value::Undefined();
    default: return Value::Undefined("'" + object.TypeName() + " object' has no attribute " + key.Repr());
  }
}

Value Interpreter::ApplyFilter(const std::string& name, const Value& input, Args& args) {
  return CallFilter(*this, name, input, args);
}

bool Interpreter::ApplyTest(const std::string& name, const Value& input, Args& args) {
  return CallTest(*this, name, input, args);
}

void Interpreter::EvalArgs(const CallArgs& call, Args* args) {
  args->positional.reserve(call.positional.size());
  for (const auto& e : call.positional) args->positional.push_back(Eval(*e));
  for (const auto& [key, e] : call.keyword) args->keyword.emplace_back(key, Eval(*e));
}

Value Interpreter::Eval(const Expr& expr) {
  try {
    return EvalInner(expr);
  } catch (TemplateError& error) {
    Locate(error, expr.where);
    throw;
  }
}

Value Interpreter::EvalInner(const Expr& e) {
  switch (e.kind) {
    case Expr::Kind::kLiteral: return e.value;
    case Expr::Kind::kName: return Lookup(e.name);
    case Expr::Kind::kList:
    case Expr::Kind::kTuple: {
      std::vector<Value> items;
      items.reserve(e.items.size());
      for (const auto& item : e.items) items.push_back(Eval(*item));
      return Value::List(std::move(items), e.kind == Expr::Kind::kTuple);
    }
    case Expr::Kind::kDict: {
      auto dict = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
        Value key = Eval(*e.items[i]);
        if (!key.Hashable()) Fail("unhashable type: '" + key.TypeName() + "'");
        dict->Set(std::move(key), Eval(*e.items[i + 1]));
      }
      return Value::MakeDict(std::move(dict));
    }
    case Expr::Kind::kGetAttr: {
      Value object = Eval(*e.a);
      return GetAttr(object, e.name);
    }
    case Expr::Kind::kGetItem: {
      Value object = Eval(*e.a);
      Value key = Eval(*e.b);
      return GetItem(object, key);
    }
    case Expr::Kind::kSlice: {
      Value object = Eval(*e.a);
      Value start = e.b ? Eval(*e.b) : Value::None();
      Value stop = e.c ? Eval(*e.c) : Value::None();
      Value step = e.d ? Eval(*e.d) : Value::None();
      if (object.is_undefined()) Fail(object.str().empty() ? "slicing an undefined value" : object.str());
      if (object.is_generator() || object.view() != Value::View::kNone) {
        Fail("'" + object.TypeName() + "' object is not subscriptable");
      }
      if (object.is_list()) {
        std::vector<Value> out;
        for (int64_t i : SliceIndices(object.list().size(), start, stop, step)) out.push_back(object.list()[i]);
        return Value::List(std::move(out), object.is_tuple());
      }
      if (object.is_string()) {
        const std::vector<char32_t> cps = ToCodePoints(object.str());
        std::u32string out;
        for (int64_t i : SliceIndices(cps.size(), start, stop, step)) out.push_back(cps[i]);
        return Value(FromCodePoints(out.data(), out.data() + out.size()));
      }
      // Jinja compiles slices to Python subscription, not to environment.getitem: no Undefined.
      Fail("'" + object.TypeName() + "' object is not subscriptable");
    }
    case Expr::Kind::kCall: {
      Value callee = Eval(*e.a);
      Args args;
      EvalArgs(e.args, &args);
      return Call(callee, args);
    }
    case Expr::Kind::kFilter: {
      Value input = e.a ? Eval(*e.a) : Value::Undefined();
      Args args;
      EvalArgs(e.args, &args);
      return ApplyFilter(e.name, input, args);
    }
    case Expr::Kind::kTest: {
      Value input = Eval(*e.a);
      Args args;
      EvalArgs(e.args, &args);
      return Value(ApplyTest(e.name, input, args) != e.negated);
    }
    case Expr::Kind::kNot: return Value(!Eval(*e.a).Truthy());
    case Expr::Kind::kNeg:
    case Expr::Kind::kPos: {
      Value v = Eval(*e.a);
      if (v.is_undefined()) Fail(v.str().empty() ? "negating an undefined value" : v.str());
      if (!v.is_number()) Fail("bad operand type for unary " + std::string(e.kind == Expr::Kind::kNeg ? "-" : "+") +
                               ": '" + v.TypeName() + "'");
      if (e.kind == Expr::Kind::kPos) return v.is_bool() ? Value(v.as_int()) : v;
      return v.is_float() ? Value(-v.as_float()) : Value(-v.as_int());
    }
    case Expr::Kind::kBinary: {
      Value a = Eval(*e.a);
      Value b = Eval(*e.b);
      return BinaryOp(e.name, a, b);
    }
    case Expr::Kind::kAnd: {
      Value a = Eval(*e.a);
      return a.Truthy() ? Eval(*e.b) : a;
    }
    case Expr::Kind::kOr: {
      Value a = Eval(*e.a);
      return a.Truthy() ? a : Eval(*e.b);
    }
    case Expr::Kind::kCompare: {
      Value left = Eval(*e.a);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value right = Eval(*e.items[i]);
        const std::string& op = e.ops[i];
        bool ok;
        if (op == "==") {
          ok = left.Equals(right);
        } else if (op == "!=") {
          ok = !left.Equals(right);
        } else if (op == "in") {
          ok = Contains(right, left);
        } else if (op == "not in") {
          ok = !Contains(right, left);
        } else {
          for (const Value* v : {&left, &right}) {
            if (v->is_undefined()) Fail(v->str().empty() ? "comparing an undefined value" : v->str());
          }
          if (op == "<") {
            ok = left.Less(right);
          } else if (op == ">") {
            ok = right.Less(left);
          } else if (op == "<=") {
            ok = !right.Less(left);
          } else {
            ok = !left.Less(right);
          }
        }
        if (!ok) return Value(false);
        left = std::move(right);
      }
      return Value(true);
    }
    case Expr::Kind::kCondition: {
      if (Eval(*e.a).Truthy()) return Eval(*e.b);
      return e.c ? Eval(*e.c) : Value::Undefined("the conditional expression has no else branch");
    }
  }
  Fail("unknown expression");
}

Interpreter::Flow Interpreter::Exec(const Node& node) {
  try {
    return ExecInner(node);
  } catch (TemplateError& error) {
    Locate(error, node.where);
    throw;
  }
}

std::string Interpreter::Capture(const Node& body, const std::shared_ptr<Frame>& frame) {
  std::string captured;
  std::string* saved_out = out_;
  FrameSwap scope(this, frame);
  out_ = &captured;
  try {
    Exec(body);
  } catch (...) {
    out_ = saved_out;
    throw;
  }
  out_ = saved_out;
  return captured;
}

Value Interpreter::ApplyFilterChain(const Expr& chain, Value input) {
  std::vector<const Expr*> filters;  // outermost first
  for (const Expr* f = &chain; f != nullptr; f = f->a.get()) filters.push_back(f);
  for (auto it = filters.rbegin(); it != filters.rend(); ++it) {
    Args args;
    EvalArgs((*it)->args, &args);
    input = ApplyFilter((*it)->name, input, args);
  }
  return input;
}

void Interpreter::Assign(const Node& node, Value value) {
  if (!node.tuple_target) {
    frame_->Set(node.targets[0], std::move(value));
    return;
  }
  std::vector<Value> items = Iterate(value);
  if (!value.is_list() && !value.is_string() && !value.is_dict()) {
    Fail("cannot unpack non-iterable " + value.TypeName() + " object");
  }
  if (items.size() != node.targets.size()) {
    Fail(absl::StrCat(items.size() > node.targets.size() ? "too many" : "not enough", " values to unpack (expected ",
                      node.targets.size(), ", got ", items.size(), ")"));
  }
  for (size_t i = 0; i < items.size(); ++i) frame_->Set(node.targets[i], std::move(items[i]));
}

Value Interpreter::CallMacro(const Node& macro, const std::shared_ptr<Frame>& defined_in, Args& args) {
  if (call_depth_ >= kMaxCallDepth) Fail("maximum macro recursion depth exceeded");
  if (args.positional.size() > macro.params.size()) {
    Fail(absl::StrCat("macro '", macro.text, "' takes not more than ", macro.params.size(), " argument(s)"));
  }
  auto frame = NewScope(macro, defined_in);
  std::vector<bool> bound(macro.params.size(), false);
  for (size_t i = 0; i < args.positional.size(); ++i) {
    frame->Set(macro.params[i], std::move(args.positional[i]));
    bound[i] = true;
  }
  for (auto& [key, value] : args.keyword) {
    size_t i = 0;
    while (i < macro.params.size() && macro.params[i] != key) ++i;
    if (i == macro.params.size()) Fail("macro '" + macro.text + "' takes no keyword argument '" + key + "'");
    if (bound[i]) Fail("macro '" + macro.text + "' got multiple values for argument '" + key + "'");
    frame->Set(key, std::move(value));
    bound[i] = true;
  }
  {
    FrameSwap scope(this, frame);  // defaults see the earlier parameters
    for (size_t i = 0; i < macro.params.size(); ++i) {
      if (bound[i]) continue;
      frame->Set(macro.params[i], macro.defaults[i] ? Eval(*macro.defaults[i])
                                                    : Value::Undefined("parameter '" + macro.params[i] +
                                                                       "' was not provided"));
    }
  }
  ++call_depth_;
  const int saved_loop_depth = loop_depth_;
  loop_depth_ = 0;
  std::string text;
  try {
    text = Capture(*macro.body, frame);
  } catch (...) {
    --call_depth_;
    loop_depth_ = saved_loop_depth;
    throw;
  }
  --call_depth_;
  loop_depth_ = saved_loop_depth;
  return Value(std::move(text));
}

Interpreter::Flow Interpreter::ExecFor(const Node& node) {
  Value iterable = Eval(*node.expr);
  if (!iterable.is_list() && !iterable.is_dict() && !iterable.is_string() && !iterable.is_undefined()) {
    Fail("'" + iterable.TypeName() + "' object is not iterable");
  }
  auto items = std::make_shared<std::vector<Value>>(Iterate(iterable));
  std::shared_ptr<Frame> outer = frame_;
  if (node.filter) {
    std::vector<Value> kept;
    for (Value& item : *items) {
      // The loop filter sees the enclosing scope's names, not the body's own.
      frame_ = std::make_shared<Frame>();
      frame_->parent = outer;
      try {
        Assign(node, item);
        if (Eval(*node.filter).Truthy()) kept.push_back(std::move(item));
      } catch (...) {
        frame_ = outer;
        throw;
      }
    }
    frame_ = outer;
    *items = std::move(kept);
  }
  if (items->empty()) {
    if (node.else_body) return Exec(*node.else_body);
    return Flow::kNormal;
  }
  // As jinja2 compiles it, the else block runs unless some iteration reached the end of the
  // body: a loop whose every iteration ends in break or continue runs its else block too.
  bool completed_an_iteration = false;
  ++loop_depth_;
  try {
    for (size_t i = 0; i < items->size(); ++i) {
      frame_ = NewScope(node, outer);
      Assign(node, (*items)[i]);
      frame_->Set("loop", MakeLoopObject(items, i, loop_depth_));
      const Flow flow = Exec(*node.body);
      if (flow == Flow::kBreak) break;
      if (flow == Flow::kNormal) completed_an_iteration = true;
    }
  } catch (...) {
    --loop_depth_;
    frame_ = outer;
    throw;
  }
  --loop_depth_;
  frame_ = outer;
  if (!completed_an_iteration && node.else_body) return Exec(*node.else_body);
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::ExecInner(const Node& node) {
  switch (node.kind) {
    case Node::Kind::kBody:
      for (const auto& child : node.children) {
        const Flow flow = Exec(*child);
        if (flow != Flow::kNormal) return flow;
      }
      return Flow::kNormal;
    case Node::Kind::kText: out_->append(node.text); return Flow::kNormal;
    case Node::Kind::kPrint: {
      Value v = Eval(*node.expr);
      if (v.is_string()) {
        out_->append(v.str());
      } else {
        out_->append(v.ToString());
      }
      return Flow::kNormal;
    }
    case Node::Kind::kIf:
      for (size_t i = 0; i < node.conds.size(); ++i) {
        if (Eval(*node.conds[i]).Truthy()) return Exec(*node.bodies[i]);
      }
      if (node.else_body) return Exec(*node.else_body);
      return Flow::kNormal;
    case Node::Kind::kFor: return ExecFor(node);
    case Node::Kind::kSet: {
      Value value = Eval(*node.expr);
      if (!node.ns_attr.empty()) {
        Value ns = Lookup(node.targets[0]);
        if (!ns.is_object() || ns.object().TypeName() != "Namespace") {
          Fail("can only set attributes on namespace objects, and '" + node.targets[0] + "' is " +
               (ns.is_undefined() ? std::string("undefined") : "a " + ns.TypeName()));
        }
        ns.object().SetAttr(node.ns_attr, std::move(value));
        return Flow::kNormal;
      }
      Assign(node, std::move(value));
      return Flow::kNormal;
    }
    case Node::Kind::kSetBlock: {
      Value text(Capture(*node.body, NewScope(node, frame_)));
      if (node.filter) text = ApplyFilterChain(*node.filter, std::move(text));
      frame_->Set(node.targets[0], std::move(text));
      return Flow::kNormal;
    }
    case Node::Kind::kMacro: {
      const Node* macro = &node;
      std::shared_ptr<Frame> defined_in = frame_;
      // The frame holds the macro and the macro holds the frame: a cycle that lives until the
      // render ends, when Run's frames are released (`release` below breaks it).
      std::weak_ptr<Frame> weak = defined_in;
      frame_->Set(node.text, Value::Function(node.text, [macro, weak](Interpreter& in, Args& args) {
                    std::shared_ptr<Frame> frame = weak.lock();
                    if (!frame) Fail("macro '" + macro->text + "' called after its scope ended");
                    return in.CallMacro(*macro, frame, args);
                  }));
      return Flow::kNormal;
    }
    case Node::Kind::kFilterBlock: {
      const Value text = ApplyFilterChain(*node.filter, Value(Capture(*node.body, NewScope(node, frame_))));
      out_->append(text.ToString());
      return Flow::kNormal;
    }
    case Node::Kind::kWith: {
      auto frame = NewScope(node, frame_);
      for (size_t i = 0; i < node.targets.size(); ++i) frame->Set(node.targets[i], Eval(*node.values[i]));
      FrameSwap scope(this, std::move(frame));
      return Exec(*node.body);
    }
    case Node::Kind::kBreak:
    case Node::Kind::kContinue:
      if (loop_depth_ == 0) Fail(std::string(node.kind == Node::Kind::kBreak ? "'break'" : "'continue'") +
                                 " outside of a for loop");
      return node.kind == Node::Kind::kBreak ? Flow::kBreak : Flow::kContinue;
    case Node::Kind::kGeneration: {
      // transformers' {% generation %} is a call block: its body is a scope of its own.
      const bool top_level = out_ == &result_.text;
      const size_t begin = out_->size();
      Flow flow;
      {
        FrameSwap scope(this, NewScope(node, frame_));
        flow = Exec(*node.body);
      }
      if (top_level) result_.generation_spans.emplace_back(begin, out_->size());
      return flow;
    }
  }
  return Flow::kNormal;
}

Template::~Template() = default;

absl::StatusOr<std::shared_ptr<const Template>> Template::Parse(std::string_view source) {
  std::shared_ptr<Template> t(new Template());
  auto root = ParseTemplate(source, &t->has_generation_);
  if (!root.ok()) return root.status();
  t->root_ = std::move(*root);
  return std::shared_ptr<const Template>(std::move(t));
}

absl::StatusOr<RenderResult> Template::Render(const std::vector<std::pair<std::string, Value>>& variables,
                                              const RenderOptions& options) const {
  try {
    Interpreter interpreter(variables, options);
    return interpreter.Run(*root_);
  } catch (const TemplateError& error) {
    const std::string where = absl::StrCat("chat template line ", error.line, ", column ", error.column);
    if (error.raised) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": the template raised an exception: ", error.message));
    }
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", error.message));
  }
}

}  // namespace ftd::data::jinja
