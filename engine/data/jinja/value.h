// The values a chat template computes with: Python's data model as Jinja2 exposes it (None,
// bool, int, float, str, list/tuple, insertion-ordered dict), plus Jinja's Undefined, callables
// (globals, filters bound as methods, macros) and mutable objects (namespace(), the loop
// variable). Conversions follow Python: str() for output, repr() inside containers, json.dumps
// for tojson, Python's truthiness, equality and ordering.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace ftd::data::jinja {

class Value;
class Interpreter;

// Thrown inside the interpreter; Template::Render turns it into an absl::Status naming the
// template line and column.
struct TemplateError {
  std::string message;
  int line = 0;  // 0: not yet located (the interpreter fills in the node being evaluated)
  int column = 0;
  bool raised = false;  // from raise_exception(): the template's own message
};
[[noreturn]] void Fail(std::string message);

struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

using NativeFunction = std::function<Value(Interpreter&, Args&)>;

struct Callable {
  std::string name;
  NativeFunction fn;
};

// An object with attributes (namespace(), loop).
class Object {
 public:
  virtual ~Object() = default;
  virtual std::string TypeName() const = 0;
  // Undefined when absent.
  virtual Value GetAttr(const std::string& name) const;
  // Only namespaces accept assignment.
  virtual void SetAttr(const std::string& name, Value value);
  virtual std::string Repr() const;
};

struct Dict;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable, kObject };

  Value() = default;  // Undefined
  static Value Undefined(std::string hint = "") {
    Value v;
    v.str_ = std::move(hint);
    return v;
  }
  static Value None() { return Value(Kind::kNone); }
  Value(bool b) : kind_(Kind::kBool), int_(b) {}
  Value(int v) : kind_(Kind::kInt), int_(v) {}
  Value(int64_t v) : kind_(Kind::kInt), int_(v) {}
  Value(double v) : kind_(Kind::kFloat), float_(v) {}
  Value(std::string s) : kind_(Kind::kString), str_(std::move(s)) {}
  Value(const char* s) : kind_(Kind::kString), str_(s) {}
  static Value List(std::vector<Value> items, bool tuple = false);
  // What Jinja's map/select/selectattr/... return: a one-pass iterator (always true, no len(),
  // not JSON serializable; iterating it empties it).
  static Value Generator(std::vector<Value> items);
  // dict.items() / keys() / values(): a list that prints as dict_items([...]) etc.
  enum class View : uint8_t { kNone, kItems, kKeys, kValues };
  static Value DictView(std::vector<Value> items, View view);
  View view() const { return view_; }
  // A generator whose first iteration fails with `error` (Jinja's filters are lazy: `x|items`
  // on a non-mapping fails only once iterated).
  static Value FailingGenerator(std::string error);
  static Value MakeDict(std::shared_ptr<Dict> dict);
  static Value NewDict();
  static Value Function(std::string name, NativeFunction fn);
  static Value FromObject(std::shared_ptr<Object> object);
  // JSON (ordered, as parsed) to Python values: objects keep their key order.
  static Value FromJson(const nlohmann::ordered_json& json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_generator() const { return kind_ == Kind::kList && generator_; }
  // A Markup string (from |safe or |escape): `markup + str` HTML-escapes the str, as
  // markupsafe does; other operations give plain strings.
  static Value Markup(std::string s) {
    Value v(std::move(s));
    v.safe_ = true;
    return v;
  }
  bool is_markup() const { return kind_ == Kind::kString && safe_; }
  // Takes a generator's remaining items (it is empty afterwards).
  std::vector<Value> Consume() const;
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_callable() const { return kind_ == Kind::kCallable; }
  bool is_object() const { return kind_ == Kind::kObject; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }
  double as_float() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& str() const { return str_; }  // the string; for Undefined its hint
  const std::vector<Value>& list() const { return *list_; }
  const Dict& dict() const { return *dict_; }
  Dict& mutable_dict() const { return *dict_; }
  const Callable& callable() const { return *callable_; }
  Object& object() const { return *object_; }
  const std::shared_ptr<Object>& object_ptr() const { return object_; }

  // Python's bool().
  bool Truthy() const;
  // Python's str() (Undefined renders as "").
  std::string ToString() const;
  // Python's repr().
  std::string Repr() const;
  // Python's type name, for messages ("str", "dict", "NoneType", ...).
  std::string TypeName() const;
  // json.dumps(value, ensure_ascii=False, indent=indent, separators=..., sort_keys=...).
  // `indent` < 0: no indentation. Fails on values JSON cannot hold.
  std::string ToJson(int indent = -1, const std::string* item_separator = nullptr,
                     const std::string* key_separator = nullptr, bool sort_keys = false) const;
  // Python ==.
  bool Equals(const Value& other) const;
  // Python <; fails for types Python cannot order.
  bool Less(const Value& other) const;
  // Whether Python could hash it (dict keys).
  bool Hashable() const;

 private:
  explicit Value(Kind kind) : kind_(kind) {}
  Kind kind_ = Kind::kUndefined;
  bool tuple_ = false;
  bool generator_ = false;
  bool safe_ = false;
  View view_ = View::kNone;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  std::shared_ptr<std::vector<Value>> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Callable> callable_;
  std::shared_ptr<Object> object_;
};

// A Python dict: insertion-ordered, keys compared with Python ==.
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* Find(const Value& key) const;
  const Value* FindStr(std::string_view key) const;
  void Set(Value key, Value value);
};

// Python's repr(float) (shortest round-trip digits, "1.0", "1e-05", "inf").
std::string FormatPythonFloat(double value);
// Python's repr(str).
std::string PythonStringRepr(std::string_view s);

// Code-point level helpers for str operations (Python indexes strings by code point).
std::vector<char32_t> ToCodePoints(std::string_view s);
std::string FromCodePoints(const char32_t* begin, const char32_t* end);
bool IsPythonWhitespace(char32_t cp);

}  // namespace ftd::data::jinja
