// The parsed form of a chat template (internal to engine/data/jinja).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/jinja/value.h"

namespace ftd::data::jinja {

struct Location {
  int line = 1;
  int column = 1;
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct CallArgs {
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
};

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kName,       // name
    kList,       // items
    kTuple,      // items
    kDict,       // items as key, value pairs
    kGetAttr,    // a.name
    kGetItem,    // a[b]
    kSlice,      // a[b:c:d]; absent parts are null
    kCall,       // a(args)
    kFilter,     // a | name(args); a is null in a filter block
    kTest,       // a is [not] name(args)
    kNot,        // not a
    kNeg,        // -a
    kPos,        // +a
    kBinary,     // a op b (arithmetic, ~)
    kAnd,        // a and b
    kOr,         // a or b
    kCompare,    // a op1 b op2 c ...
    kCondition,  // b if a else c  (a: test, b: then, c: else or null)
  };
  Kind kind;
  Location where;
  Value value;       // literal
  std::string name;  // name, attribute, filter, test, or binary operator
  bool negated = false;
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> items;
  std::vector<std::string> ops;  // compare operators, one per items entry
  CallArgs args;
};

struct Node;
using NodeList = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class Kind {
    kBody,        // children
    kText,        // text
    kPrint,       // expr
    kIf,          // branches: conds[i] -> bodies[i]; else_body
    kFor,         // targets in expr [if filter]: body, else_body
    kSet,         // targets (or namespace target) = expr
    kSetBlock,    // targets[0] = rendered body, through filter
    kMacro,       // name(params = defaults): body
    kFilterBlock, // filter applied to the rendered body
    kWith,        // targets = values: body
    kBreak,
    kContinue,
    kGeneration,  // body, tracked for the assistant mask
  };
  Kind kind;
  Location where;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;  // a kFilter chain whose innermost input is null
  std::vector<std::string> targets;
  bool tuple_target = false;
  std::string ns_attr;  // set ns.attr = ...: targets[0] is ns
  std::vector<ExprPtr> conds;
  std::vector<std::unique_ptr<Node>> bodies;
  std::unique_ptr<Node> body;
  std::unique_ptr<Node> else_body;
  NodeList children;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null when none
  std::vector<ExprPtr> values;
  // For the root body and nodes whose body is its own scope (for, macro, filter, set block,
  // with, generation): names that start Undefined in that scope (see ScopeUndefinedNames).
  std::vector<std::string> scope_undefined;
};

// jinja2 resolves names at compile time, per scope: a name assigned unconditionally in a scope
// (the template, a loop body, a macro, a filter or set block) and not read at that scope's level
// before its first assignment is that scope's own variable from the start, Undefined until
// assigned; nested scopes reading it earlier see Undefined, not the outer value. Fills
// scope_undefined on `root` and on every node that opens a scope.
void AnnotateScopes(Node* root);

// Parses the template source; the error names the line and column.
absl::StatusOr<std::unique_ptr<Node>> ParseTemplate(std::string_view source, bool* has_generation);

}  // namespace ftd::data::jinja
