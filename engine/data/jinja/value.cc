#include "engine/data/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "engine/data/utf8.h"

namespace ftd::data::jinja {

void Fail(std::string message) { throw TemplateError{std::move(message)}; }

Value Object::GetAttr(const std::string& name) const {
  return Value::Undefined("'" + TypeName() + " object' has no attribute '" + name + "'");
}

void Object::SetAttr(const std::string& name, Value value) {
  Fail("cannot assign attribute '" + name + "' on a " + TypeName() + " object");
}

std::string Object::Repr() const { return "<" + TypeName() + " object>"; }

Value Value::List(std::vector<Value> items, bool tuple) {
  Value v(Kind::kList);
  v.tuple_ = tuple;
  v.list_ = std::make_shared<std::vector<Value>>(std::move(items));
  return v;
}

Value Value::Generator(std::vector<Value> items) {
  Value v = List(std::move(items));
  v.generator_ = true;
  return v;
}

Value Value::DictView(std::vector<Value> items, View view) {
  Value v = List(std::move(items));
  v.view_ = view;
  return v;
}

Value Value::FailingGenerator(std::string error) {
  Value v = Generator({});
  v.str_ = std::move(error);
  return v;
}

std::vector<Value> Value::Consume() const {
  if (!str_.empty()) Fail(str_);
  std::vector<Value> items = std::move(*list_);
  list_->clear();
  return items;
}

Value Value::MakeDict(std::shared_ptr<Dict> dict) {
  Value v(Kind::kDict);
  v.dict_ = std::move(dict);
  return v;
}

Value Value::NewDict() { return MakeDict(std::make_shared<Dict>()); }

Value Value::Function(std::string name, NativeFunction fn) {
  Value v(Kind::kCallable);
  v.callable_ = std::make_shared<Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

Value Value::FromObject(std::shared_ptr<Object> object) {
  Value v(Kind::kObject);
  v.object_ = std::move(object);
  return v;
}

Value Value::FromJson(const nlohmann::ordered_json& json) {
  using J = nlohmann::ordered_json::value_t;
  switch (json.type()) {
    case J::null: return None();
    case J::boolean: return Value(json.get<bool>());
    case J::number_integer: return Value(json.get<int64_t>());
    case J::number_unsigned: return Value(static_cast<int64_t>(json.get<uint64_t>()));
    case J::number_float: return Value(json.get<double>());
    case J::string: return Value(json.get<std::string>());
    case J::array: {
      std::vector<Value> items;
      items.reserve(json.size());
      for (const auto& item : json) items.push_back(FromJson(item));
      return List(std::move(items));
    }
    case J::object: {
      auto dict = std::make_shared<Dict>();
      dict->items.reserve(json.size());
      for (auto it = json.begin(); it != json.end(); ++it) dict->items.emplace_back(Value(it.key()), FromJson(it.value()));
      return MakeDict(std::move(dict));
    }
    default: return None();
  }
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool:
    case Kind::kInt: return int_ != 0;
    case Kind::kFloat: return float_ != 0.0;
    case Kind::kString: return !str_.empty();
    case Kind::kList: return generator_ || !list_->empty();
    case Kind::kDict: return !dict_->items.empty();
    case Kind::kCallable:
    case Kind::kObject: return true;
  }
  return false;
}

std::string FormatPythonFloat(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  char buf[64];
  auto result = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::scientific);
  std::string sci(buf, result.ptr);
  // sci: [-]d[.ddd]e(+|-)XX
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(sci.substr(e + 1));
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out;
  if (exponent >= -4 && exponent < 16) {
    if (exponent >= 0) {
      std::string integer = digits.substr(0, std::min<size_t>(digits.size(), exponent + 1));
      while (static_cast<int>(integer.size()) < exponent + 1) integer += '0';
      std::string fraction = digits.size() > static_cast<size_t>(exponent + 1) ? digits.substr(exponent + 1) : "0";
      out = integer + "." + fraction;
    } else {
      out = "0." + std::string(-exponent - 1, '0') + digits;
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof(exp), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  }
  return sign + out;
}

std::vector<char32_t> ToCodePoints(std::string_view s) { return DecodeUtf8(s); }

std::string FromCodePoints(const char32_t* begin, const char32_t* end) {
  std::string out;
  out.reserve(end - begin);
  for (const char32_t* p = begin; p != end; ++p) AppendUtf8(*p, &out);
  return out;
}

bool IsPythonWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
         cp == 0x3000;
}

namespace {

bool IsPrintableForRepr(char32_t cp) {
  if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad) return false;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f)) return false;
  if ((cp >= 0x205f && cp <= 0x2064) || cp == 0x3000 || cp == 0xfeff) return false;
  if (cp >= 0xd800 && cp <= 0xdfff) return false;
  return true;
}

void AppendJsonString(std::string_view s, std::string* out) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

struct JsonStyle {
  int indent;
  std::string item_separator;
  std::string key_separator;
  bool sort_keys;
};

std::string JsonFloat(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return FormatPythonFloat(v);
}

void AppendJson(const Value& value, const JsonStyle& style, int depth, std::string* out) {
  const auto newline = [&](int level) {
    if (style.indent < 0) return;
    out->push_back('\n');
    out->append(static_cast<size_t>(style.indent) * level, ' ');
  };
  switch (value.kind()) {
    case Value::Kind::kNone: *out += "null"; return;
    case Value::Kind::kBool: *out += value.as_bool() ? "true" : "false"; return;
    case Value::Kind::kInt: *out += std::to_string(value.as_int()); return;
    case Value::Kind::kFloat: *out += JsonFloat(value.as_float()); return;
    case Value::Kind::kString: AppendJsonString(value.str(), out); return;
    case Value::Kind::kList: {
      if (value.is_generator() || value.view() != Value::View::kNone) {
        Fail("Object of type " + value.TypeName() + " is not JSON serializable");
      }
      if (value.list().empty()) {
        *out += "[]";
        return;
      }
      out->push_back('[');
      bool first = true;
      for (const Value& item : value.list()) {
        if (!first) *out += style.item_separator;
        first = false;
        newline(depth + 1);
        AppendJson(item, style, depth + 1, out);
      }
      newline(depth);
      out->push_back(']');
      return;
    }
    case Value::Kind::kDict: {
      if (value.dict().items.empty()) {
        *out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& item : value.dict().items) items.push_back(&item);
      if (style.sort_keys) {
        std::stable_sort(items.begin(), items.end(), [](const auto* a, const auto* b) { return a->first.Less(b->first); });
      }
      out->push_back('{');
      bool first = true;
      for (const auto* item : items) {
        if (!first) *out += style.item_separator;
        first = false;
        newline(depth + 1);
        const Value& key = item->first;
        switch (key.kind()) {
          case Value::Kind::kString: AppendJsonString(key.str(), out); break;
          case Value::Kind::kNone: *out += "\"null\""; break;
          case Value::Kind::kBool: *out += key.as_bool() ? "\"true\"" : "\"false\""; break;
          case Value::Kind::kInt: *out += "\"" + std::to_string(key.as_int()) + "\""; break;
          case Value::Kind::kFloat: *out += "\"" + JsonFloat(key.as_float()) + "\""; break;
          default: Fail("keys must be str, int, float, bool or None, not " + key.TypeName());
        }
        *out += style.key_separator;
        AppendJson(item->second, style, depth + 1, out);
      }
      newline(depth);
      out->push_back('}');
      return;
    }
    default: Fail("Object of type " + value.TypeName() + " is not JSON serializable");
  }
}

}  // namespace

std::string PythonStringRepr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t cp : ToCodePoints(s)) {
    if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (!IsPrintableForRepr(cp)) {
      char buf[16];
      if (cp <= 0xff) {
        std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(cp));
      } else if (cp <= 0xffff) {
        std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
      } else {
        std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(cp));
      }
      out += buf;
    } else {
      AppendUtf8(cp, &out);
    }
  }
  out.push_back(quote);
  return out;
}

std::string Value::ToString() const {
  switch (kind_) {
    case Kind::kUndefined: return "";
    case Kind::kString: return str_;
    case Kind::kNone: return "None";
    case Kind::kBool: return int_ ? "True" : "False";
    case Kind::kInt: return std::to_string(int_);
    case Kind::kFloat: return FormatPythonFloat(float_);
    default: return Repr();
  }
}

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kString: return PythonStringRepr(str_);
    case Kind::kList: {
      if (generator_) return "<generator object>";
      if (view_ != View::kNone) {
        Value plain = List(*list_);
        return TypeName() + "(" + plain.Repr() + ")";
      }
      std::string out = tuple_ ? "(" : "[";
      for (size_t i = 0; i < list_->size(); ++i) {
        if (i) out += ", ";
        out += (*list_)[i].Repr();
      }
      if (tuple_ && list_->size() == 1) out += ",";
      out += tuple_ ? ")" : "]";
      return out;
    }
    case Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [key, value] : dict_->items) {
        if (!first) out += ", ";
        first = false;
        out += key.Repr() + ": " + value.Repr();
      }
      return out + "}";
    }
    case Kind::kCallable: return "<function " + callable_->name + ">";
    case Kind::kObject: return object_->Repr();
    case Kind::kUndefined: return "Undefined";
    default: return ToString();
  }
}

std::string Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kList:
      if (view_ == View::kItems) return "dict_items";
      if (view_ == View::kKeys) return "dict_keys";
      if (view_ == View::kValues) return "dict_values";
      return generator_ ? "generator" : tuple_ ? "tuple" : "list";
    case Kind::kDict: return "dict";
    case Kind::kCallable: return "function";
    case Kind::kObject: return object_->TypeName();
  }
  return "object";
}

std::string Value::ToJson(int indent, const std::string* item_separator, const std::string* key_separator,
                          bool sort_keys) const {
  JsonStyle style{indent, indent >= 0 ? "," : ", ", ": ", sort_keys};
  if (item_separator) style.item_separator = *item_separator;
  if (key_separator) style.key_separator = *key_separator;
  std::string out;
  AppendJson(*this, style, 0, &out);
  return out;
}

bool Value::Equals(const Value& other) const {
  if (is_number() && other.is_number()) {
    if (kind_ == Kind::kFloat || other.kind_ == Kind::kFloat) return as_float() == other.as_float();
    return int_ == other.int_;
  }
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone: return true;
    case Kind::kString: return str_ == other.str_;
    case Kind::kList: {
      if (generator_ || other.generator_ || view_ != other.view_) return list_ == other.list_;
      if (tuple_ != other.tuple_ || list_->size() != other.list_->size()) return false;
      for (size_t i = 0; i < list_->size(); ++i) {
        if (!(*list_)[i].Equals((*other.list_)[i])) return false;
      }
      return true;
    }
    case Kind::kDict: {
      if (dict_->items.size() != other.dict_->items.size()) return false;
      for (const auto& [key, value] : dict_->items) {
        const Value* found = other.dict_->Find(key);
        if (!found || !found->Equals(value)) return false;
      }
      return true;
    }
    case Kind::kCallable: return callable_ == other.callable_;
    case Kind::kObject: return object_ == other.object_;
    default: return false;
  }
}

bool Value::Less(const Value& other) const {
  if (is_number() && other.is_number()) {
    if (kind_ == Kind::kFloat || other.kind_ == Kind::kFloat) return as_float() < other.as_float();
    return int_ < other.int_;
  }
  if (is_string() && other.is_string()) return str_ < other.str_;  // UTF-8 order is code-point order
  if (is_list() && other.is_list() && tuple_ == other.tuple_ && !generator_ && !other.generator_ &&
      view_ == View::kNone && other.view_ == View::kNone) {
    const auto& a = *list_;
    const auto& b = *other.list_;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      if (!a[i].Equals(b[i])) return a[i].Less(b[i]);
    }
    return a.size() < b.size();
  }
  Fail("'<' not supported between instances of '" + TypeName() + "' and '" + other.TypeName() + "'");
}

bool Value::Hashable() const {
  switch (kind_) {
    case Kind::kList:
      if (!tuple_) return false;
      for (const Value& item : *list_) {
        if (!item.Hashable()) return false;
      }
      return true;
    case Kind::kDict: return false;
    default: return true;
  }
}

const Value* Dict::Find(const Value& key) const {
  for (const auto& item : items) {
    if (item.first.Equals(key)) return &item.second;
  }
  return nullptr;
}

const Value* Dict::FindStr(std::string_view key) const {
  for (const auto& item : items) {
    if (item.first.is_string() && item.first.str() == key) return &item.second;
  }
  return nullptr;
}

void Dict::Set(Value key, Value value) {
  for (auto& item : items) {
    if (item.first.Equals(key)) {
      item.second = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

}  // namespace ftd::data::jinja
