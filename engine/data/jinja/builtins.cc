// Filters, tests, globals, str/dict/list methods and operators, with the semantics of Jinja2
// 3.1 and Python 3 (and transformers' overrides: tojson, raise_exception, strftime_now, dict,
// namespace).
#include <algorithm>
#include <clocale>
#include <cmath>
#include <cwctype>
#include <ctime>
#include <locale.h>

#include "absl/strings/str_cat.h"
#include "engine/data/jinja/interpreter.h"
#include "engine/data/utf8.h"

namespace ftd::data::jinja {
namespace {

constexpr int64_t kMaxRange = 100000;           // jinja2.sandbox.MAX_RANGE
constexpr size_t kMaxStringBytes = 256u << 20;  // keeps a hostile template from exhausting memory

// Binds a call's arguments to named parameters, as Python does.
class ArgReader {
 public:
  ArgReader(const char* function, Args& args, std::vector<const char*> names)
      : function_(function), args_(args), names_(std::move(names)) {
    if (args.positional.size() > names_.size()) {
      Fail(absl::StrCat(function_, "() takes at most ", names_.size(), " argument(s) (", args.positional.size(),
                        " given)"));
    }
    for (const auto& [key, value] : args.keyword) {
      size_t i = 0;
      while (i < names_.size() && key != names_[i]) ++i;
      if (i == names_.size()) Fail(absl::StrCat(function_, "() got an unexpected keyword argument '", key, "'"));
      if (i < args.positional.size()) Fail(absl::StrCat(function_, "() got multiple values for argument '", key, "'"));
    }
  }
  bool Has(size_t i) const { return Find(i) != nullptr; }
  Value Get(size_t i, Value fallback = Value::Undefined()) const {
    const Value* v = Find(i);
    return v ? *v : fallback;
  }
  Value Required(size_t i) const {
    const Value* v = Find(i);
    if (!v) Fail(absl::StrCat(function_, "() missing required argument '", names_[i], "'"));
    return *v;
  }

 private:
  const Value* Find(size_t i) const {
    if (i < args_.positional.size()) return &args_.positional[i];
    for (const auto& [key, value] : args_.keyword) {
      if (key == names_[i]) return &value;
    }
    return nullptr;
  }
  const char* function_;
  Args& args_;
  std::vector<const char*> names_;
};

std::string RequireString(const Value& v, const char* what) {
  if (!v.is_string()) Fail(absl::StrCat(what, " must be a string, not ", v.TypeName()));
  return v.str();
}

int64_t RequireInt(const Value& v, const char* what) {
  if (!v.is_int() && !v.is_bool()) Fail(absl::StrCat(what, " must be an integer, not ", v.TypeName()));
  return v.as_int();
}

[[noreturn]] void FailUndefined(const Value& v) {
  Fail(v.str().empty() ? "an undefined value was used" : v.str());
}

// ---- Unicode case mapping (the C.UTF-8 locale's tables; ASCII when it is missing) ----

locale_t Utf8Locale() {
  static locale_t locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
  return locale;
}

char32_t ToUpper(char32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') ? cp - 32 : cp;
  locale_t l = Utf8Locale();
  return l ? static_cast<char32_t>(towupper_l(static_cast<wint_t>(cp), l)) : cp;
}

char32_t ToLower(char32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  locale_t l = Utf8Locale();
  return l ? static_cast<char32_t>(towlower_l(static_cast<wint_t>(cp), l)) : cp;
}

bool IsCased(char32_t cp) { return ToUpper(cp) != cp || ToLower(cp) != cp; }
bool IsAlpha(char32_t cp) {
  if (cp < 0x80) return std::isalpha(static_cast<int>(cp));
  locale_t l = Utf8Locale();
  return l ? iswalpha_l(static_cast<wint_t>(cp), l) : false;
}
bool IsDigit(char32_t cp) { return cp >= '0' && cp <= '9'; }

std::string MapCase(const std::string& s, char32_t (*f)(char32_t)) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : ToCodePoints(s)) AppendUtf8(f(cp), &out);
  return out;
}

std::string Title(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  for (char32_t cp : ToCodePoints(s)) {
    const bool cased = IsCased(cp);
    AppendUtf8(cased ? (previous_cased ? ToLower(cp) : ToUpper(cp)) : cp, &out);
    previous_cased = cased;
  }
  return out;
}

std::string Capitalize(const std::string& s) {
  std::string out;
  bool first = true;
  for (char32_t cp : ToCodePoints(s)) {
    AppendUtf8(first ? ToUpper(cp) : ToLower(cp), &out);
    first = false;
  }
  return out;
}

// ---- str methods ----

std::string Strip(const std::string& s, const Value& chars, bool left, bool right) {
  const std::vector<char32_t> cps = ToCodePoints(s);
  std::vector<char32_t> set;
  const bool whitespace = chars.is_none() || chars.is_undefined();
  if (!whitespace) set = ToCodePoints(RequireString(chars, "strip chars"));
  const auto strip = [&](char32_t cp) {
    return whitespace ? IsPythonWhitespace(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  size_t begin = 0, end = cps.size();
  if (left) {
    while (begin < end && strip(cps[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strip(cps[end - 1])) --end;
  }
  return FromCodePoints(cps.data() + begin, cps.data() + end);
}

std::vector<std::string> SplitWhitespace(const std::string& s, int64_t maxsplit) {
  const std::vector<char32_t> cps = ToCodePoints(s);
  std::vector<std::string> out;
  size_t i = 0;
  while (i < cps.size()) {
    while (i < cps.size() && IsPythonWhitespace(cps[i])) ++i;
    if (i == cps.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      size_t end = cps.size();
      while (end > i && IsPythonWhitespace(cps[end - 1])) --end;
      out.push_back(FromCodePoints(cps.data() + i, cps.data() + end));
      break;
    }
    size_t j = i;
    while (j < cps.size() && !IsPythonWhitespace(cps[j])) ++j;
    out.push_back(FromCodePoints(cps.data() + i, cps.data() + j));
    i = j;
  }
  return out;
}

std::vector<std::string> Split(const std::string& s, const std::string& sep, int64_t maxsplit) {
  if (sep.empty()) Fail("empty separator");
  std::vector<std::string> out;
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    const size_t found = s.find(sep, pos);
    if (found == std::string::npos) break;
    out.push_back(s.substr(pos, found - pos));
    pos = found + sep.size();
  }
  out.push_back(s.substr(pos));
  return out;
}

std::vector<std::string> RSplit(const std::string& s, const std::string& sep, int64_t maxsplit) {
  if (sep.empty()) Fail("empty separator");
  std::vector<std::string> out;
  size_t end = s.size();
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    if (end < sep.size()) break;
    const size_t found = s.rfind(sep, end - sep.size());
    if (found == std::string::npos) break;
    out.push_back(s.substr(found + sep.size(), end - found - sep.size()));
    end = found;
  }
  out.push_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

bool IsLineBreak(char32_t cp) {
  return cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d || cp == 0x1e ||
         cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

std::vector<std::string> SplitLines(const std::string& s, bool keepends) {
  const std::vector<char32_t> cps = ToCodePoints(s);
  std::vector<std::string> out;
  size_t start = 0, i = 0;
  while (i < cps.size()) {
    if (!IsLineBreak(cps[i])) {
      ++i;
      continue;
    }
    size_t end = i + 1;
    if (cps[i] == '\r' && end < cps.size() && cps[end] == '\n') ++end;
    out.push_back(FromCodePoints(cps.data() + start, cps.data() + (keepends ? end : i)));
    start = i = end;
  }
  if (start < cps.size()) out.push_back(FromCodePoints(cps.data() + start, cps.data() + cps.size()));
  return out;
}

std::string Replace(const std::string& s, const std::string& old, const std::string& replacement, int64_t count) {
  if (old.empty()) {
    // Python inserts the replacement before every character and at the end.
    const std::vector<char32_t> cps = ToCodePoints(s);
    std::string out;
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += replacement;
        ++done;
      }
      if (i < cps.size()) AppendUtf8(cps[i], &out);
    }
    return out;
  }
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t found = s.find(old, pos);
    if (found == std::string::npos) break;
    out.append(s, pos, found - pos);
    out += replacement;
    pos = found + old.size();
    ++done;
    if (out.size() > kMaxStringBytes) Fail("string too large");
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Code-point index of a byte offset.
int64_t CodePointIndex(const std::string& s, size_t byte) {
  int64_t n = 0;
  for (size_t i = 0; i < byte && i < s.size(); ++i) n += (static_cast<unsigned char>(s[i]) & 0xC0) != 0x80;
  return n;
}

// str[start:end] bounds for find/count/startswith (code points to bytes).
std::pair<size_t, size_t> ByteRange(const std::string& s, const Value& start, const Value& end) {
  const std::vector<char32_t> cps = ToCodePoints(s);
  const int64_t n = cps.size();
  const auto norm = [&](const Value& v, int64_t fallback) {
    if (v.is_undefined() || v.is_none()) return fallback;
    int64_t i = RequireInt(v, "index");
    if (i < 0) i = std::max<int64_t>(0, i + n);
    return std::min(i, n);
  };
  const int64_t b = norm(start, 0), e = norm(end, n);
  const auto to_byte = [&](int64_t cp_index) {
    size_t byte = 0;
    for (int64_t k = 0; k < cp_index; ++k) {
      std::string tmp;
      AppendUtf8(cps[k], &tmp);
      byte += tmp.size();
    }
    return byte;
  };
  if (e < b) return {to_byte(b), to_byte(b)};
  return {to_byte(b), to_byte(e)};
}

bool AffixMatch(const std::string& s, const Value& affix, const Value& start, const Value& end, bool prefix) {
  auto [b, e] = ByteRange(s, start, end);
  const std::string_view range(s.data() + b, e - b);
  const auto match = [&](const Value& candidate) {
    const std::string a = RequireString(candidate, prefix ? "startswith first arg" : "endswith first arg");
    if (a.size() > range.size()) return false;
    return prefix ? range.substr(0, a.size()) == a : range.substr(range.size() - a.size()) == a;
  };
  if (affix.is_tuple()) {
    for (const Value& candidate : affix.list()) {
      if (match(candidate)) return true;
    }
    return false;
  }
  return match(affix);
}

std::string Repeat(const std::string& s, int64_t n) {
  if (n <= 0) return "";
  if (s.size() * static_cast<uint64_t>(n) > kMaxStringBytes) Fail("string too large");
  std::string out;
  out.reserve(s.size() * n);
  for (int64_t i = 0; i < n; ++i) out += s;
  return out;
}

// Python's str.format with {}, {0}, {name}, {name[key]}, {name.attr}, !s/!r and no format spec
// other than an empty one.
std::string PythonFormat(Interpreter& in, const std::string& format, Args& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < format.size(); ++i) {
    const char c = format[i];
    if (c == '}') {
      if (i + 1 < format.size() && format[i + 1] == '}') {
        out.push_back('}');
        ++i;
        continue;
      }
      Fail("Single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < format.size() && format[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    const size_t close = format.find('}', i);
    if (close == std::string::npos) Fail("Single '{' encountered in format string");
    std::string field = format.substr(i + 1, close - i - 1);
    i = close;
    char conversion = 0;
    const size_t colon = field.find(':');
    if (colon != std::string::npos) {
      if (colon + 1 != field.size()) Fail("format specs in str.format are not supported");
      field.resize(colon);
    }
    const size_t bang = field.find('!');
    if (bang != std::string::npos) {
      conversion = bang + 1 < field.size() ? field[bang + 1] : 0;
      field.resize(bang);
    }
    size_t name_end = field.find_first_of(".[");
    std::string head = field.substr(0, name_end);
    Value value;
    if (head.empty()) {
      if (auto_index >= args.positional.size()) Fail("Replacement index out of range for positional args tuple");
      value = args.positional[auto_index++];
    } else if (std::all_of(head.begin(), head.end(), ::isdigit)) {
      const size_t index = std::stoul(head);
      if (index >= args.positional.size()) Fail("Replacement index out of range for positional args tuple");
      value = args.positional[index];
    } else {
      bool found = false;
      for (const auto& [key, v] : args.keyword) {
        if (key == head) {
          value = v;
          found = true;
        }
      }
      if (!found) Fail("KeyError: '" + head + "'");
    }
    while (name_end != std::string::npos && name_end < field.size()) {
      if (field[name_end] == '.') {
        const size_t next = field.find_first_of(".[", name_end + 1);
        value = in.GetAttr(value, field.substr(name_end + 1, next - name_end - 1));
        name_end = next;
      } else {
        const size_t close_bracket = field.find(']', name_end);
        if (close_bracket == std::string::npos) Fail("Missing ']' in format string");
        const std::string key = field.substr(name_end + 1, close_bracket - name_end - 1);
        const bool numeric = !key.empty() && std::all_of(key.begin(), key.end(), ::isdigit);
        value = in.GetItem(value, numeric ? Value(static_cast<int64_t>(std::stoll(key))) : Value(key));
        name_end = close_bracket + 1;
      }
    }
    out += conversion == 'r' ? value.Repr() : value.ToString();
  }
  return out;
}

// Python's printf-style `format % args` for %s %r %d %i %f %%.
std::string PercentFormat(const std::string& format, const Value& args) {
  std::vector<Value> values = args.is_tuple() ? args.list() : std::vector<Value>{args};
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out.push_back(format[i]);
      continue;
    }
    if (i + 1 >= format.size()) Fail("incomplete format");
    size_t j = i + 1;
    std::string spec;
    while (j < format.size() && std::strchr("0123456789.-+ #", format[j])) spec.push_back(format[j++]);
    if (j >= format.size()) Fail("incomplete format");
    const char conv = format[j];
    i = j;
    if (conv == '%') {
      out.push_back('%');
      continue;
    }
    if (next >= values.size()) Fail("not enough arguments for format string");
    const Value& v = values[next++];
    char buf[512];
    switch (conv) {
      case 's': out += v.ToString(); break;
      case 'r': out += v.Repr(); break;
      case 'd':
      case 'i':
        if (!v.is_number()) Fail("%d format: a real number is required, not " + v.TypeName());
        std::snprintf(buf, sizeof(buf), ("%" + spec + "lld").c_str(),
                      static_cast<long long>(v.is_float() ? std::trunc(v.as_float()) : v.as_int()));
        out += buf;
        break;
      case 'f':
      case 'e':
      case 'g':
        if (!v.is_number()) Fail("must be real number, not " + v.TypeName());
        std::snprintf(buf, sizeof(buf), ("%" + spec + conv).c_str(), v.as_float());
        out += buf;
        break;
      default: Fail(std::string("unsupported format character '") + conv + "'");
    }
  }
  // Python lets an unused argument pass when it looks like a mapping (has __getitem__ and is not
  // a tuple or str): a dict, a list, Jinja's Undefined.
  const bool mapping_like = args.is_dict() || args.is_undefined() ||
                            (args.is_list() && !args.is_tuple() && !args.is_generator());
  if (next < values.size() && !mapping_like) Fail("not all arguments converted during string formatting");
  return out;
}

Value StrList(const std::vector<std::string>& parts) {
  std::vector<Value> out;
  out.reserve(parts.size());
  for (const auto& p : parts) out.emplace_back(p);
  return Value::List(std::move(out));
}

Value StringMethod(const Value& self, const std::string& name) {
  const std::string s = self.str();
  const auto method = [&](auto fn) { return Value::Function("str." + name, fn); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip", right = name != "lstrip";
    return method([s, left, right, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"chars"});
      return Value(Strip(s, r.Get(0), left, right));
    });
  }
  if (name == "split" || name == "rsplit") {
    const bool reverse = name == "rsplit";
    return method([s, reverse, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"sep", "maxsplit"});
      const Value sep = r.Get(0, Value::None());
      const int64_t maxsplit = RequireInt(r.Get(1, Value(int64_t{-1})), "maxsplit");
      if (sep.is_none()) {
        if (!reverse) return StrList(SplitWhitespace(s, maxsplit));
        if (maxsplit < 0) return StrList(SplitWhitespace(s, -1));
        // rsplit(None, n): split from the right.
        std::vector<std::string> words = SplitWhitespace(s, -1);
        if (static_cast<int64_t>(words.size()) <= maxsplit + 1) return StrList(words);
        const std::vector<char32_t> cps = ToCodePoints(s);
        size_t end = cps.size();
        std::vector<std::string> out;
        for (int64_t k = 0; k < maxsplit; ++k) {
          while (end > 0 && IsPythonWhitespace(cps[end - 1])) --end;
          size_t b = end;
          while (b > 0 && !IsPythonWhitespace(cps[b - 1])) --b;
          out.push_back(FromCodePoints(cps.data() + b, cps.data() + end));
          end = b;
        }
        size_t b = 0;
        while (b < end && IsPythonWhitespace(cps[b])) ++b;
        while (end > b && IsPythonWhitespace(cps[end - 1])) --end;
        out.push_back(FromCodePoints(cps.data() + b, cps.data() + end));
        std::reverse(out.begin(), out.end());
        return StrList(out);
      }
      const std::string sep_s = RequireString(sep, "sep");
      return StrList(reverse ? RSplit(s, sep_s, maxsplit) : Split(s, sep_s, maxsplit));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool prefix = name == "startswith";
    return method([s, prefix, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"prefix", "start", "end"});
      return Value(AffixMatch(s, r.Required(0), r.Get(1), r.Get(2), prefix));
    });
  }
  if (name == "replace") {
    return method([s](Interpreter&, Args& args) {
      ArgReader r("replace", args, {"old", "new", "count"});
      return Value(Replace(s, RequireString(r.Required(0), "replace() old"), RequireString(r.Required(1), "replace() new"),
                           RequireInt(r.Get(2, Value(int64_t{-1})), "count")));
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" || name == "swapcase" ||
      name == "casefold") {
    return method([s, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {});
      if (name == "upper") return Value(MapCase(s, ToUpper));
      if (name == "lower" || name == "casefold") return Value(MapCase(s, ToLower));
      if (name == "title") return Value(Title(s));
      if (name == "capitalize") return Value(Capitalize(s));
      std::string out;
      for (char32_t cp : ToCodePoints(s)) AppendUtf8(ToUpper(cp) != cp ? ToUpper(cp) : ToLower(cp), &out);
      return Value(out);
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    return method([s, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"sub", "start", "end"});
      const std::string sub = RequireString(r.Required(0), "substring");
      auto [b, e] = ByteRange(s, r.Get(1), r.Get(2));
      const std::string_view range(s.data() + b, e - b);
      if (name == "count") {
        if (sub.empty()) return Value(CodePointIndex(std::string(range), range.size()) + 1);
        int64_t n = 0;
        for (size_t pos = range.find(sub); pos != std::string_view::npos; pos = range.find(sub, pos + sub.size())) ++n;
        return Value(n);
      }
      const size_t found = name[0] == 'r' ? range.rfind(sub) : range.find(sub);
      if (found == std::string_view::npos) {
        if (name == "index" || name == "rindex") Fail("substring not found");
        return Value(int64_t{-1});
      }
      return Value(CodePointIndex(s, b + found));
    });
  }
  if (name == "join") {
    return method([s](Interpreter&, Args& args) {
      ArgReader r("join", args, {"iterable"});
      std::string out;
      bool first = true;
      for (const Value& item : Iterate(r.Required(0))) {
        if (!item.is_string()) Fail("sequence item: expected str instance, " + item.TypeName() + " found");
        if (!first) out += s;
        first = false;
        out += item.str();
      }
      return Value(out);
    });
  }
  if (name == "splitlines") {
    return method([s](Interpreter&, Args& args) {
      ArgReader r("splitlines", args, {"keepends"});
      return StrList(SplitLines(s, r.Get(0, Value(false)).Truthy()));
    });
  }
  if (name == "isdigit" || name == "isnumeric" || name == "isdecimal" || name == "isalpha" || name == "isalnum" ||
      name == "isspace" || name == "isupper" || name == "islower") {
    return method([s, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {});
      const std::vector<char32_t> cps = ToCodePoints(s);
      if (cps.empty()) return Value(false);
      if (name == "isupper" || name == "islower") {
        bool any_cased = false;
        for (char32_t cp : cps) {
          if (!IsCased(cp)) continue;
          any_cased = true;
          if (name == "isupper" ? ToUpper(cp) != cp : ToLower(cp) != cp) return Value(false);
        }
        return Value(any_cased);
      }
      for (char32_t cp : cps) {
        bool ok;
        if (name == "isspace") {
          ok = IsPythonWhitespace(cp);
        } else if (name == "isalpha") {
          ok = IsAlpha(cp);
        } else if (name == "isalnum") {
          ok = IsAlpha(cp) || IsDigit(cp);
        } else {
          ok = IsDigit(cp);
        }
        if (!ok) return Value(false);
      }
      return Value(true);
    });
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const bool prefix = name == "removeprefix";
    return method([s, prefix, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"affix"});
      const std::string a = RequireString(r.Required(0), name.c_str());
      if (prefix && s.compare(0, a.size(), a) == 0) return Value(s.substr(a.size()));
      if (!prefix && s.size() >= a.size() && s.compare(s.size() - a.size(), a.size(), a) == 0) {
        return Value(s.substr(0, s.size() - a.size()));
      }
      return Value(s);
    });
  }
  if (name == "partition" || name == "rpartition") {
    const bool right = name == "rpartition";
    return method([s, right, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"sep"});
      const std::string sep = RequireString(r.Required(0), "sep");
      if (sep.empty()) Fail("empty separator");
      const size_t found = right ? s.rfind(sep) : s.find(sep);
      if (found == std::string::npos) {
        return right ? Value::List({Value(""), Value(""), Value(s)}, true)
                     : Value::List({Value(s), Value(""), Value("")}, true);
      }
      return Value::List({Value(s.substr(0, found)), Value(sep), Value(s.substr(found + sep.size()))}, true);
    });
  }
  if (name == "format") {
    return method([s](Interpreter& in, Args& args) { return Value(PythonFormat(in, s, args)); });
  }
  if (name == "zfill" || name == "ljust" || name == "rjust" || name == "center") {
    return method([s, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"width", "fillchar"});
      const int64_t width = RequireInt(r.Required(0), "width");
      const std::string fill = name == "zfill" ? "0" : r.Get(1, Value(" ")).ToString();
      const int64_t len = ToCodePoints(s).size();
      if (width <= len) return Value(s);
      const int64_t pad = width - len;
      if (name == "ljust") return Value(s + Repeat(fill, pad));
      if (name == "rjust") return Value(Repeat(fill, pad) + s);
      if (name == "zfill") {
        if (!s.empty() && (s[0] == '-' || s[0] == '+')) return Value(s.substr(0, 1) + Repeat("0", pad) + s.substr(1));
        return Value(Repeat("0", pad) + s);
      }
      const int64_t left = pad / 2 + (pad & width & 1);
      return Value(Repeat(fill, left) + s + Repeat(fill, pad - left));
    });
  }
  return Value::Undefined();
}

Value DictMethod(const Value& self, const std::string& name) {
  const auto method = [&](auto fn) { return Value::Function("dict." + name, fn); };
  if (name == "get") {
    return method([self](Interpreter&, Args& args) {
      ArgReader r("get", args, {"key", "default"});
      const Value key = r.Required(0);
      if (!key.Hashable()) Fail("unhashable type: '" + key.TypeName() + "'");
      if (const Value* v = self.dict().Find(key)) return *v;
      return r.Get(1, Value::None());
    });
  }
  if (name == "items" || name == "keys" || name == "values") {
    return method([self, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {});
      std::vector<Value> out;
      for (const auto& [key, value] : self.dict().items) {
        if (name == "items") {
          out.push_back(Value::List({key, value}, true));
        } else {
          out.push_back(name == "keys" ? key : value);
        }
      }
      return Value::DictView(std::move(out), name == "items"  ? Value::View::kItems
                                             : name == "keys" ? Value::View::kKeys
                                                              : Value::View::kValues);
    });
  }
  if (name == "copy") {
    return method([self](Interpreter&, Args& args) {
      ArgReader r("copy", args, {});
      return Value::MakeDict(std::make_shared<Dict>(self.dict()));
    });
  }
  for (const char* unsafe : {"pop", "popitem", "setdefault", "update", "clear", "fromkeys"}) {
    if (name == unsafe) return Value::Undefined("access to attribute '" + name + "' of 'dict' object is unsafe.");
  }
  return Value::Undefined();
}

Value ListMethod(const Value& self, const std::string& name) {
  if (name == "index" || name == "count") {
    return Value::Function("list." + name, [self, name](Interpreter&, Args& args) {
      ArgReader r(name.c_str(), args, {"value"});
      const Value needle = r.Required(0);
      int64_t count = 0;
      for (size_t i = 0; i < self.list().size(); ++i) {
        if (!self.list()[i].Equals(needle)) continue;
        if (name == "index") return Value(static_cast<int64_t>(i));
        ++count;
      }
      if (name == "index") Fail(needle.Repr() + " is not in list");
      return Value(count);
    });
  }
  for (const char* unsafe : {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"}) {
    if (name == unsafe) {
      return Value::Undefined("access to attribute '" + name + "' of '" + self.TypeName() + "' object is unsafe.");
    }
  }
  return Value::Undefined();
}

// ---- objects ----

class NamespaceObject : public Object {
 public:
  std::string TypeName() const override { return "Namespace"; }
  Value GetAttr(const std::string& name) const override {
    if (const Value* v = attrs_.FindStr(name)) return *v;
    return Object::GetAttr(name);
  }
  void SetAttr(const std::string& name, Value value) override {
    if (!name.empty() && name[0] == '_') {
      Fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + name +
           "'. Please rename the attribute.");
    }
    attrs_.Set(Value(name), std::move(value));
  }
  std::string Repr() const override { return "<Namespace " + Value::MakeDict(std::make_shared<Dict>(attrs_)).Repr() + ">"; }

 private:
  Dict attrs_;
};

class LoopObject : public Object {
 public:
  LoopObject(std::shared_ptr<std::vector<Value>> items, size_t index, int depth)
      : items_(std::move(items)), index_(index), depth_(depth) {}
  std::string TypeName() const override { return "LoopContext"; }
  Value GetAttr(const std::string& name) const override {
    const int64_t n = items_->size(), i = index_;
    if (name == "index") return Value(i + 1);
    if (name == "index0") return Value(i);
    if (name == "revindex") return Value(n - i);
    if (name == "revindex0") return Value(n - i - 1);
    if (name == "first") return Value(i == 0);
    if (name == "last") return Value(i == n - 1);
    if (name == "length") return Value(n);
    if (name == "depth") return Value(static_cast<int64_t>(depth_));
    if (name == "depth0") return Value(static_cast<int64_t>(depth_ - 1));
    if (name == "previtem") return i > 0 ? (*items_)[i - 1] : Value::Undefined("there is no previous item");
    if (name == "nextitem") return i + 1 < n ? (*items_)[i + 1] : Value::Undefined("there is no next item");
    if (name == "cycle") {
      const size_t index = index_;
      return Value::Function("loop.cycle", [index](Interpreter&, Args& args) {
        if (args.positional.empty()) Fail("no items for cycling given");
        return args.positional[index % args.positional.size()];
      });
    }
    return Object::GetAttr(name);
  }
  std::string Repr() const override { return "<LoopContext " + std::to_string(index_ + 1) + "/" + std::to_string(items_->size()) + ">"; }

 private:
  std::shared_ptr<std::vector<Value>> items_;
  size_t index_;
  int depth_;
};

Value NewNamespace(Args& args) {
  auto ns = std::make_shared<NamespaceObject>();
  for (const Value& positional : args.positional) {
    if (!positional.is_dict()) Fail("namespace() takes a mapping or keyword arguments, not " + positional.TypeName());
    for (const auto& [key, value] : positional.dict().items) ns->SetAttr(key.ToString(), value);
  }
  for (auto& [key, value] : args.keyword) ns->SetAttr(key, value);
  return Value::FromObject(std::move(ns));
}

// ---- filters ----

Value AttributeOf(Interpreter& in, const Value& item, const Value& attribute) {
  // jinja2's make_attrgetter: "a.b" walks attributes, digits index.
  const std::string path = attribute.ToString();
  if (attribute.is_int()) return in.GetItem(item, attribute);
  Value v = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot - start);
    const bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    v = in.GetItem(v, numeric ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return v;
}

Value SortKey(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(MapCase(v.str(), ToLower));
  return v;
}

int64_t Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined: return 0;
    case Value::Kind::kString: return ToCodePoints(v.str()).size();
    case Value::Kind::kList:
      if (v.is_generator()) Fail("object of type 'generator' has no len()");
      return v.list().size();
    case Value::Kind::kDict: return v.dict().items.size();
    default: Fail("object of type '" + v.TypeName() + "' has no len()");
  }
}

std::string Indent(const std::string& input, const Value& width, bool first, bool blank) {
  const std::string indention = width.is_string() ? width.str() : std::string(RequireInt(width, "indent width"), ' ');
  std::string s = input + "\n";  // as jinja2 does, so that splitlines keeps a trailing empty line
  std::vector<std::string> lines = SplitLines(s, false);
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + indention : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : indention + lines[i]);
  }
  if (first) rv = indention + rv;
  return rv;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string EscapeNonAscii(const std::string& json) {
  std::string out;
  for (char32_t cp : ToCodePoints(json)) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
      continue;
    }
    char buf[16];
    if (cp >= 0x10000) {
      const char32_t v = cp - 0x10000;
      std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (v >> 10)),
                    static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
    } else {
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
    }
    out += buf;
  }
  return out;
}

Value ToJsonFilter(const Value& input, Args& args) {
  ArgReader r("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  const Value indent = r.Get(1, Value::None());
  int indent_width = -1;
  if (!indent.is_none()) indent_width = std::max<int64_t>(0, RequireInt(indent, "indent"));
  const Value separators = r.Get(2, Value::None());
  std::string item_sep, key_sep;
  if (!separators.is_none()) {
    if (!separators.is_list() || separators.list().size() != 2) Fail("separators must be a pair of strings");
    item_sep = RequireString(separators.list()[0], "item separator");
    key_sep = RequireString(separators.list()[1], "key separator");
  }
  std::string json = input.ToJson(indent_width, separators.is_none() ? nullptr : &item_sep,
                                   separators.is_none() ? nullptr : &key_sep, r.Get(3, Value(false)).Truthy());
  if (r.Get(0, Value(false)).Truthy()) json = EscapeNonAscii(json);
  return Value(std::move(json));
}

std::vector<Value> SelectOrReject(Interpreter& in, const Value& input, Args& args, bool select, bool by_attribute) {
  // args: [attribute,] [test name, test args...]
  std::vector<Value> positional = args.positional;
  Value attribute;
  if (by_attribute) {
    if (positional.empty()) Fail("selectattr/rejectattr need an attribute name");
    attribute = positional.front();
    positional.erase(positional.begin());
  }
  std::string test;
  Args test_args;
  if (!positional.empty()) {
    test = RequireString(positional.front(), "test name");
    test_args.positional.assign(positional.begin() + 1, positional.end());
    test_args.keyword = args.keyword;
  }
  std::vector<Value> out;
  for (const Value& item : Iterate(input)) {
    const Value subject = by_attribute ? AttributeOf(in, item, attribute) : item;
    bool ok;
    if (test.empty()) {
      ok = subject.Truthy();
    } else {
      Args copy = test_args;
      ok = in.ApplyTest(test, subject, copy);
    }
    if (ok == select) out.push_back(item);
  }
  return out;
}

Value MinMax(Interpreter& in, const Value& input, Args& args, bool max) {
  ArgReader r(max ? "max" : "min", args, {"case_sensitive", "attribute"});
  const bool case_sensitive = r.Get(0, Value(false)).Truthy();
  const Value attribute = r.Get(1, Value::None());
  std::vector<Value> items = Iterate(input);
  if (items.empty()) return Value::Undefined(std::string("No aggregated item, sequence was empty."));
  size_t best = 0;
  for (size_t i = 1; i < items.size(); ++i) {
    const Value a = SortKey(attribute.is_none() ? items[i] : AttributeOf(in, items[i], attribute), case_sensitive);
    const Value b = SortKey(attribute.is_none() ? items[best] : AttributeOf(in, items[best], attribute), case_sensitive);
    if (max ? b.Less(a) : a.Less(b)) best = i;
  }
  return items[best];
}


Value FilterImpl(Interpreter& in, const std::string& name, const Value& input, Args& args);

// Jinja's map/select/selectattr/items/unique/... are generators: an error inside them shows only
// when the result is iterated.
Value LazyFilter(Interpreter& in, const std::string& name, const Value& input, Args& args) {
  try {
    return FilterImpl(in, name, input, args);
  } catch (const TemplateError& error) {
    if (error.raised) throw;
    return Value::FailingGenerator(error.message);
  }
}

Value FilterImpl(Interpreter& in, const std::string& name, const Value& input, Args& args) {
  static const char* const kNoArguments[] = {"safe", "string", "length", "count", "upper", "lower", "title",
                                             "capitalize", "list", "first", "last", "abs", "wordcount", "escape",
                                             "e", "forceescape", "items"};
  for (const char* no_args : kNoArguments) {
    if (name == no_args && (!args.positional.empty() || !args.keyword.empty())) {
      Fail("do_" + name + "() takes 1 positional argument but " +
           std::to_string(1 + args.positional.size() + args.keyword.size()) + " were given");
    }
  }
  if (name == "safe") return input.is_markup() ? input : Value::Markup(input.ToString());
  if (name == "string") return input.is_string() ? input : Value(input.ToString());
  if (name == "trim") {
    ArgReader r("trim", args, {"chars"});
    return Value(Strip(input.ToString(), r.Get(0, Value::None()), true, true));
  }
  if (name == "length" || name == "count") return Value(Length(input));
  if (name == "upper") return Value(MapCase(input.ToString(), ToUpper));
  if (name == "lower") return Value(MapCase(input.ToString(), ToLower));
  if (name == "title") {
    // jinja2's do_title: split before runs of [-\s({\[<]; each piece's first character upper,
    // the rest lower (not str.title: "a,b" stays "A,b").
    std::string out;
    bool word_start = true;
    for (char32_t cp : ToCodePoints(input.ToString())) {
      const bool separator = cp == '-' || IsPythonWhitespace(cp) || cp == '(' || cp == '{' || cp == '[' || cp == '<';
      if (separator) {
        AppendUtf8(cp, &out);
        word_start = true;
      } else {
        AppendUtf8(word_start ? ToUpper(cp) : ToLower(cp), &out);
        word_start = false;
      }
    }
    return Value(out);
  }
  if (name == "capitalize") return Value(Capitalize(input.ToString()));
  if (name == "tojson") return ToJsonFilter(input, args);
  if (name == "default" || name == "d") {
    ArgReader r("default", args, {"default_value", "boolean"});
    const bool boolean = r.Get(1, Value(false)).Truthy();
    if (input.is_undefined() || (boolean && !input.Truthy())) return r.Get(0, Value(""));
    return input;
  }
  if (name == "join") {
    ArgReader r("join", args, {"d", "attribute"});
    const std::string sep = r.Get(0, Value("")).ToString();
    const Value attribute = r.Get(1, Value::None());
    std::string out;
    bool first = true;
    for (const Value& item : Iterate(input)) {
      if (!first) out += sep;
      first = false;
      out += (attribute.is_none() ? item : AttributeOf(in, item, attribute)).ToString();
    }
    return Value(out);
  }
  if (name == "first" || name == "last") {
    if (name == "last" && input.is_generator()) Fail("'generator' object is not reversible");
    std::vector<Value> items = Iterate(input);
    if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    if (!input.is_list() && !input.is_dict() && !input.is_string() && !input.is_undefined()) {
      Fail("'" + input.TypeName() + "' object is not iterable");
    }
    return Value::List(Iterate(input));
  }
  if (name == "items") {
    if (input.is_undefined()) return Value::Generator({});
    if (!input.is_dict()) Fail("Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& [key, value] : input.dict().items) out.push_back(Value::List({key, value}, true));
    return Value::Generator(std::move(out));
  }
  if (name == "dictsort") {
    ArgReader r("dictsort", args, {"case_sensitive", "by", "reverse"});
    if (!input.is_dict()) Fail("You can only sort by either \"key\" or \"value\" of a mapping");
    const bool case_sensitive = r.Get(0, Value(false)).Truthy();
    const std::string by = r.Get(1, Value("key")).ToString();
    if (by != "key" && by != "value") Fail("You can only sort by either \"key\" or \"value\"");
    std::vector<Value> out;
    for (const auto& [key, value] : input.dict().items) out.push_back(Value::List({key, value}, true));
    const size_t pos = by == "key" ? 0 : 1;
    std::stable_sort(out.begin(), out.end(), [&](const Value& a, const Value& b) {
      return SortKey(a.list()[pos], case_sensitive).Less(SortKey(b.list()[pos], case_sensitive));
    });
    if (r.Get(2, Value(false)).Truthy()) std::reverse(out.begin(), out.end());
    return Value::List(std::move(out));
  }
  if (name == "map") {
    std::vector<Value> out;
    if (!input.Truthy()) return Value::Generator({});
    const Value* attribute = nullptr;
    for (const auto& [key, value] : args.keyword) {
      if (key == "attribute") attribute = &value;
    }
    if (attribute) {
      Value fallback;
      bool has_default = false;
      for (const auto& [key, value] : args.keyword) {
        if (key == "default") {
          fallback = value;
          has_default = true;
        }
      }
      for (const Value& item : Iterate(input)) {
        Value v = AttributeOf(in, item, *attribute);
        out.push_back(has_default && v.is_undefined() ? fallback : v);
      }
      return Value::Generator(std::move(out));
    }
    if (args.positional.empty()) Fail("map() needs a filter name or attribute=");
    const std::string filter = RequireString(args.positional.front(), "filter name");
    Args filter_args;
    filter_args.positional.assign(args.positional.begin() + 1, args.positional.end());
    filter_args.keyword = args.keyword;
    for (const Value& item : Iterate(input)) {
      Args copy = filter_args;
      out.push_back(in.ApplyFilter(filter, item, copy));
    }
    return Value::Generator(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    if (!input.Truthy()) return Value::Generator({});
    const bool by_attribute = name.size() > 6;
    return Value::Generator(SelectOrReject(in, input, args, name[0] == 's', by_attribute));
  }
  if (name == "replace") {
    ArgReader r("replace", args, {"old", "new", "count"});
    const Value count = r.Get(2, Value::None());
    return Value(Replace(input.ToString(), r.Required(0).ToString(), r.Required(1).ToString(),
                         count.is_none() ? -1 : RequireInt(count, "count")));
  }
  if (name == "int") {
    ArgReader r("int", args, {"default", "base"});
    const Value fallback = r.Get(0, Value(int64_t{0}));
    const int base = static_cast<int>(RequireInt(r.Get(1, Value(int64_t{10})), "base"));
    if (input.is_bool() || input.is_int()) return Value(input.as_int());
    if (input.is_float()) return std::isfinite(input.as_float()) ? Value(static_cast<int64_t>(input.as_float())) : fallback;
    if (input.is_string()) {
      std::string s = Strip(input.str(), Value::None(), true, true);
      s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(s.c_str(), &end, base);
      if (!s.empty() && end && *end == '\0' && errno == 0) return Value(static_cast<int64_t>(v));
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == '\0' && std::isfinite(d)) return Value(static_cast<int64_t>(d));
    }
    return fallback;
  }
  if (name == "float") {
    ArgReader r("float", args, {"default"});
    if (input.is_number()) return Value(input.as_float());
    if (input.is_string()) {
      const std::string s = Strip(input.str(), Value::None(), true, true);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end && *end == '\0') return Value(d);
    }
    return r.Get(0, Value(0.0));
  }
  if (name == "abs") {
    if (input.is_float()) return Value(std::fabs(input.as_float()));
    if (input.is_number()) return Value(std::abs(input.as_int()));
    Fail("bad operand type for abs(): '" + input.TypeName() + "'");
  }
  if (name == "round") {
    ArgReader r("round", args, {"precision", "method"});
    const int64_t precision = RequireInt(r.Get(0, Value(int64_t{0})), "precision");
    const std::string method = r.Get(1, Value("common")).ToString();
    if (!input.is_number()) Fail("round() needs a number, not " + input.TypeName());
    const double scale = std::pow(10.0, static_cast<double>(precision));
    if (method == "common" && !input.is_float()) {
      // Python's round() of an int is an int (half to even at negative precision).
      if (precision >= 0) return Value(input.as_int());
      return Value(static_cast<int64_t>(std::nearbyint(input.as_float() * scale) / scale));
    }
    double x = input.as_float() * scale;
    if (method == "common") {
      x = std::nearbyint(x);  // Python rounds halves to even
    } else if (method == "ceil") {
      x = std::ceil(x);
    } else if (method == "floor") {
      x = std::floor(x);
    } else {
      Fail("method must be 'common', 'ceil' or 'floor'");
    }
    return Value(x / scale);
  }
  if (name == "reverse") {
    if (input.is_string()) {
      std::vector<char32_t> cps = ToCodePoints(input.str());
      std::reverse(cps.begin(), cps.end());
      return Value(FromCodePoints(cps.data(), cps.data() + cps.size()));
    }
    const bool iterator = input.is_list() && !input.is_generator();  // reversed(list) is an iterator
    std::vector<Value> items = Iterate(input);
    std::reverse(items.begin(), items.end());
    return iterator ? Value::Generator(std::move(items)) : Value::List(std::move(items));
  }
  if (name == "sort") {
    ArgReader r("sort", args, {"reverse", "case_sensitive", "attribute"});
    const bool reverse = r.Get(0, Value(false)).Truthy();
    const bool case_sensitive = r.Get(1, Value(false)).Truthy();
    const Value attribute = r.Get(2, Value::None());
    std::vector<Value> items = Iterate(input);
    std::vector<Value> keys;
    for (const Value& item : items) {
      keys.push_back(SortKey(attribute.is_none() ? item : AttributeOf(in, item, attribute), case_sensitive));
    }
    std::vector<size_t> order(items.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return reverse ? keys[b].Less(keys[a]) : keys[a].Less(keys[b]);
    });
    std::vector<Value> out;
    for (size_t i : order) out.push_back(items[i]);
    return Value::List(std::move(out));
  }
  if (name == "unique") {
    ArgReader r("unique", args, {"case_sensitive", "attribute"});
    const bool case_sensitive = r.Get(0, Value(false)).Truthy();
    const Value attribute = r.Get(1, Value::None());
    std::vector<Value> out, seen;
    for (const Value& item : Iterate(input)) {
      const Value key = SortKey(attribute.is_none() ? item : AttributeOf(in, item, attribute), case_sensitive);
      if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return s.Equals(key); })) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::Generator(std::move(out));
  }
  if (name == "min" || name == "max") return MinMax(in, input, args, name == "max");
  if (name == "sum") {
    ArgReader r("sum", args, {"attribute", "start"});
    const Value attribute = r.Get(0, Value::None());
    Value total = r.Get(1, Value(int64_t{0}));
    for (const Value& item : Iterate(input)) {
      total = BinaryOp("+", total, attribute.is_none() ? item : AttributeOf(in, item, attribute));
    }
    return total;
  }
  if (name == "indent") {
    ArgReader r("indent", args, {"width", "first", "blank"});
    if (input.is_undefined()) FailUndefined(input);
    if (!input.is_string()) Fail("unsupported operand type(s) for +=: '" + input.TypeName() + "' and 'str'");
    return Value(Indent(input.str(), r.Get(0, Value(int64_t{4})), r.Get(1, Value(false)).Truthy(),
                        r.Get(2, Value(false)).Truthy()));
  }
  if (name == "escape" || name == "e" || name == "forceescape") {
    if (input.is_markup() && name != "forceescape") return input;
    return Value::Markup(HtmlEscape(input.ToString()));
  }
  if (name == "attr") {
    ArgReader r("attr", args, {"name"});
    return in.GetAttr(input, r.Required(0).ToString());
  }
  if (name == "format") {
    if (!args.keyword.empty()) Fail("format filter: keyword arguments are not supported");
    return Value(PercentFormat(input.ToString(), Value::List(args.positional, true)));
  }
  if (name == "center") {
    ArgReader r("center", args, {"width"});
    Args method_args;
    method_args.positional.push_back(r.Get(0, Value(int64_t{80})));
    return in.Call(StringMethod(Value(input.ToString()), "center"), method_args);
  }
  if (name == "wordcount") {  // len(re.findall(r"\w+", str(s)))
    int64_t words = 0;
    bool in_word = false;
    for (char32_t cp : ToCodePoints(input.ToString())) {
      const bool word = IsAlpha(cp) || IsDigit(cp) || cp == '_';
      words += word && !in_word;
      in_word = word;
    }
    return Value(words);
  }
  if (name == "batch" || name == "slice") {
    ArgReader r(name.c_str(), args, {"n", "fill_with"});
    if (!input.is_list() && !input.is_string() && !input.is_dict()) Fail("'" + input.TypeName() + "' object is not iterable");
    const int64_t n = RequireInt(r.Required(0), "count");
    if (n <= 0) Fail(name + " needs a positive count");
    std::vector<Value> items = Iterate(input);
    std::vector<Value> out;
    const Value fill = r.Get(1, Value::None());
    if (name == "batch") {
      for (size_t i = 0; i < items.size(); i += n) {
        std::vector<Value> chunk(items.begin() + i, items.begin() + std::min<size_t>(items.size(), i + n));
        if (r.Has(1)) {
          while (static_cast<int64_t>(chunk.size()) < n) chunk.push_back(fill);
        }
        out.push_back(Value::List(std::move(chunk)));
      }
    } else {
      const size_t per = items.size() / n, extra = items.size() % n;
      size_t offset = 0;
      for (int64_t s = 0; s < n; ++s) {
        const size_t take = per + (static_cast<size_t>(s) < extra ? 1 : 0);
        std::vector<Value> chunk(items.begin() + offset, items.begin() + offset + take);
        offset += take;
        if (r.Has(1) && static_cast<size_t>(s) >= extra && extra > 0) chunk.push_back(fill);
        out.push_back(Value::List(std::move(chunk)));
      }
    }
    return Value::Generator(std::move(out));
  }
  Fail("No filter named '" + name + "'.");
}

const char* const kFilterNames[] = {"safe", "string", "trim", "length", "count", "upper", "lower", "title",
                                    "capitalize", "tojson", "default", "d", "join", "first", "last", "list", "items",
                                    "dictsort", "map", "select", "reject", "selectattr", "rejectattr", "replace", "int",
                                    "float", "abs", "round", "reverse", "sort", "unique", "min", "max", "sum", "indent",
                                    "escape", "e", "forceescape", "attr", "format", "center", "wordcount", "batch",
                                    "slice"};

// ---- tests ----

bool TestImpl(Interpreter& in, const std::string& name, const Value& v, Args& args) {
  const auto arg = [&](const char* what) {
    if (args.positional.empty() && args.keyword.empty()) Fail(std::string("test '") + name + "' needs " + what);
    return args.positional.empty() ? args.keyword.front().second : args.positional.front();
  };
  static const char* const kNoArguments[] = {"defined", "undefined", "none", "string", "mapping", "iterable",
                                             "sequence", "boolean", "true", "false", "integer", "float", "number",
                                             "callable", "escaped", "odd", "even", "lower", "upper"};
  for (const char* no_args : kNoArguments) {
    if (name == no_args && (!args.positional.empty() || !args.keyword.empty())) {
      Fail("test_" + name + "() takes 1 positional argument but " +
           std::to_string(1 + args.positional.size() + args.keyword.size()) + " were given");
    }
  }
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return (v.is_list() && !v.is_generator()) || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number();
  if (name == "callable") return v.is_callable();
  if (name == "escaped") return false;
  if (name == "odd" || name == "even") return BinaryOp("%", v, Value(int64_t{2})).Equals(Value(int64_t{name == "odd"}));
  if (name == "divisibleby") return BinaryOp("%", v, arg("a divisor")).Equals(Value(int64_t{0}));
  if (name == "eq" || name == "equalto" || name == "==") return v.Equals(arg("a value"));
  if (name == "ne" || name == "!=") return !v.Equals(arg("a value"));
  if (name == "lt" || name == "lessthan" || name == "<") return v.Less(arg("a value"));
  if (name == "gt" || name == "greaterthan" || name == ">") return arg("a value").Less(v);
  if (name == "le" || name == "<=") return !arg("a value").Less(v);
  if (name == "ge" || name == ">=") return !v.Less(arg("a value"));
  if (name == "in") return Contains(arg("a container"), v);
  if (name == "sameas") {
    const Value other = arg("a value");
    if (v.is_none() || v.is_bool() || v.is_undefined()) return v.kind() == other.kind() && v.Equals(other);
    return v.kind() == other.kind() && v.Equals(other) && (v.is_int() || v.is_string());
  }
  if (name == "lower" || name == "upper") {  // str(value).islower() / isupper()
    bool any_cased = false;
    for (char32_t cp : ToCodePoints(v.ToString())) {
      if (!IsCased(cp)) continue;
      any_cased = true;
      if (name == "upper" ? ToUpper(cp) != cp : ToLower(cp) != cp) return false;
    }
    return any_cased;
  }
  if (name == "filter") return HasFilter(arg("a name").ToString());
  if (name == "test") return HasTest(arg("a name").ToString());
  Fail("No test named '" + name + "'.");
}

const char* const kTestNames[] = {"defined", "undefined", "none", "string", "mapping", "iterable", "sequence",
                                  "boolean", "true", "false", "integer", "float", "number", "callable", "escaped",
                                  "odd", "even", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan",
                                  "<", "gt", "greaterthan", ">", "le", "<=", "ge", ">=", "in", "sameas", "lower",
                                  "upper", "filter", "test"};

Value Arithmetic(const std::string& op, const Value& a, const Value& b) {
  const auto unsupported = [&]() -> Value {
    Fail("unsupported operand type(s) for " + op + ": '" + a.TypeName() + "' and '" + b.TypeName() + "'");
  };
  if (!(op == "%" && a.is_string())) {
    for (const Value* v : {&a, &b}) {
      if (v->is_undefined()) FailUndefined(*v);
    }
  }
  if (a.is_number() && b.is_number()) {
    const bool floating = a.is_float() || b.is_float();
    if (op == "+") return floating ? Value(a.as_float() + b.as_float()) : Value(a.as_int() + b.as_int());
    if (op == "-") return floating ? Value(a.as_float() - b.as_float()) : Value(a.as_int() - b.as_int());
    if (op == "*") return floating ? Value(a.as_float() * b.as_float()) : Value(a.as_int() * b.as_int());
    if (op == "/") {
      if (b.as_float() == 0) Fail("division by zero");
      return Value(a.as_float() / b.as_float());
    }
    if (op == "//" || op == "%") {
      if (b.as_float() == 0) Fail(op == "//" ? "integer division or modulo by zero" : "modulo by zero");
      if (floating) {
        const double q = std::floor(a.as_float() / b.as_float());
        return op == "//" ? Value(q) : Value(a.as_float() - q * b.as_float());
      }
      int64_t q = a.as_int() / b.as_int();
      if ((a.as_int() % b.as_int() != 0) && ((a.as_int() < 0) != (b.as_int() < 0))) --q;
      return op == "//" ? Value(q) : Value(a.as_int() - q * b.as_int());
    }
    if (op == "**") {
      if (!floating && b.as_int() >= 0) {
        int64_t result = 1;
        for (int64_t i = 0; i < b.as_int(); ++i) {
          if (__builtin_mul_overflow(result, a.as_int(), &result)) Fail("integer too large");
        }
        return Value(result);
      }
      return Value(std::pow(a.as_float(), b.as_float()));
    }
  }
  if (op == "+") {
    if (a.is_markup()) {
      if (!b.is_string()) unsupported();
      return Value::Markup(a.str() + (b.is_markup() ? b.str() : HtmlEscape(b.str())));
    }
    if (a.is_string() && b.is_string()) {
      if (a.str().size() + b.str().size() > kMaxStringBytes) Fail("string too large");
      return Value(a.str() + b.str());
    }
    const auto plain = [](const Value& v) { return !v.is_generator() && v.view() == Value::View::kNone; };
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple() && plain(a) && plain(b)) {
      std::vector<Value> out = a.list();
      out.insert(out.end(), b.list().begin(), b.list().end());
      return Value::List(std::move(out), a.is_tuple());
    }
    if (a.is_list() && b.is_list() && plain(a)) {
      Fail(absl::StrCat("can only concatenate ", a.TypeName(), " (not \"", b.TypeName(), "\") to ", a.TypeName()));
    }
    if (a.is_string() || b.is_string()) {
      Fail(a.is_string() ? "can only concatenate str (not \"" + b.TypeName() + "\") to str"
                         : "unsupported operand type(s) for +: '" + a.TypeName() + "' and 'str'");
    }
    return unsupported();
  }
  if (op == "*") {
    const auto repeatable = [](const Value& v) {
      return v.is_string() || (v.is_list() && !v.is_generator() && v.view() == Value::View::kNone);
    };
    if (repeatable(a) && (b.is_int() || b.is_bool())) {
      if (a.is_string()) return Value(Repeat(a.str(), b.as_int()));
      std::vector<Value> out;
      if (a.list().size() * std::max<int64_t>(0, b.as_int()) > 1000000) Fail("list too large");
      for (int64_t i = 0; i < b.as_int(); ++i) out.insert(out.end(), a.list().begin(), a.list().end());
      return Value::List(std::move(out), a.is_tuple());
    }
    if (repeatable(b) && (a.is_int() || a.is_bool())) return Arithmetic(op, b, a);
    return unsupported();
  }
  if (op == "%" && a.is_string()) return Value(PercentFormat(a.str(), b));
  return unsupported();
}

}  // namespace

std::vector<Value> Iterate(const Value& value) {
  switch (value.kind()) {
    case Value::Kind::kUndefined: return {};
    case Value::Kind::kList: return value.is_generator() ? value.Consume() : value.list();
    case Value::Kind::kDict: {
      std::vector<Value> keys;
      keys.reserve(value.dict().items.size());
      for (const auto& item : value.dict().items) keys.push_back(item.first);
      return keys;
    }
    case Value::Kind::kString: {
      std::vector<Value> chars;
      for (char32_t cp : ToCodePoints(value.str())) {
        std::string s;
        AppendUtf8(cp, &s);
        chars.emplace_back(std::move(s));
      }
      return chars;
    }
    default: Fail("'" + value.TypeName() + "' object is not iterable");
  }
}

bool Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined: return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        if (item.is_undefined()) FailUndefined(item);
        Fail("'in <string>' requires string as left operand, not " + item.TypeName());
      }
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& v : Iterate(container)) {
        if (v.Equals(item)) return true;
      }
      return false;
    case Value::Kind::kDict:
      if (!item.Hashable()) Fail("unhashable type: '" + item.TypeName() + "'");
      return container.dict().Find(item) != nullptr;
    default: Fail("argument of type '" + container.TypeName() + "' is not iterable");
  }
}

Value BinaryOp(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string out = a.ToString();
    out += b.ToString();
    if (out.size() > kMaxStringBytes) Fail("string too large");
    return Value(std::move(out));
  }
  return Arithmetic(op, a, b);
}

Value MakeLoopObject(std::shared_ptr<std::vector<Value>> items, size_t index, int depth) {
  return Value::FromObject(std::make_shared<LoopObject>(std::move(items), index, depth));
}

Value BoundMethod(const Value& receiver, const std::string& name) {
  if (name.empty() || name[0] == '_') return Value::Undefined();
  switch (receiver.kind()) {
    case Value::Kind::kString: return StringMethod(receiver, name);
    case Value::Kind::kDict: return DictMethod(receiver, name);
    case Value::Kind::kList: return ListMethod(receiver, name);
    default: return Value::Undefined();
  }
}

Value CallFilter(Interpreter& in, const std::string& name, const Value& input, Args& args) {
  static const char* const kLazy[] = {"map", "select", "reject", "selectattr", "rejectattr", "items", "unique",
                                      "batch", "slice"};
  for (const char* lazy : kLazy) {
    if (name == lazy) return LazyFilter(in, name, input, args);
  }
  return FilterImpl(in, name, input, args);
}

bool CallTest(Interpreter& in, const std::string& name, const Value& input, Args& args) {
  return TestImpl(in, name, input, args);
}

bool HasFilter(const std::string& name) {
  return std::any_of(std::begin(kFilterNames), std::end(kFilterNames), [&](const char* n) { return name == n; });
}

bool HasTest(const std::string& name) {
  return std::any_of(std::begin(kTestNames), std::end(kTestNames), [&](const char* n) { return name == n; });
}

Value GlobalFunction(const std::string& name) {
  if (name == "range") {
    static const Value range = Value::Function("range", [](Interpreter&, Args& args) {
      if (!args.keyword.empty()) Fail("range() takes no keyword arguments");
      std::vector<int64_t> a;
      for (const Value& v : args.positional) a.push_back(RequireInt(v, "range() argument"));
      int64_t start = 0, stop = 0, step = 1;
      if (a.size() == 1) {
        stop = a[0];
      } else if (a.size() == 2 || a.size() == 3) {
        start = a[0];
        stop = a[1];
        if (a.size() == 3) step = a[2];
      } else {
        Fail("range expected 1 to 3 arguments");
      }
      if (step == 0) Fail("range() arg 3 must not be zero");
      std::vector<Value> out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (static_cast<int64_t>(out.size()) >= kMaxRange) {
          Fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        }
        out.emplace_back(i);
      }
      return Value::List(std::move(out));
    });
    return range;
  }
  if (name == "namespace") {
    static const Value ns = Value::Function("namespace", [](Interpreter&, Args& args) { return NewNamespace(args); });
    return ns;
  }
  if (name == "dict") {
    static const Value dict = Value::Function("dict", [](Interpreter&, Args& args) {
      auto d = std::make_shared<Dict>();
      if (args.positional.size() > 1) Fail("dict expected at most 1 argument");
      if (!args.positional.empty()) {
        const Value& source = args.positional[0];
        if (source.is_dict()) {
          *d = source.dict();
        } else {
          for (const Value& pair : Iterate(source)) {
            if (!pair.is_list() || pair.list().size() != 2) Fail("dictionary update sequence element has wrong length");
            d->Set(pair.list()[0], pair.list()[1]);
          }
        }
      }
      for (const auto& [key, value] : args.keyword) d->Set(Value(key), value);
      return Value::MakeDict(std::move(d));
    });
    return dict;
  }
  if (name == "raise_exception") {
    static const Value raise = Value::Function("raise_exception", [](Interpreter&, Args& args) -> Value {
      ArgReader r("raise_exception", args, {"message"});
      throw TemplateError{r.Get(0, Value("")).ToString(), 0, 0, true};
    });
    return raise;
  }
  if (name == "strftime_now") {
    static const Value strftime_now = Value::Function("strftime_now", [](Interpreter& in, Args& args) {
      ArgReader r("strftime_now", args, {"format"});
      const std::string format = RequireString(r.Required(0), "strftime_now format");
      const std::time_t now = in.Now();
      std::tm tm{};
      localtime_r(&now, &tm);
      std::string out(format.size() * 4 + 64, '\0');
      const size_t n = std::strftime(out.data(), out.size(), format.c_str(), &tm);
      out.resize(n);
      return Value(out);
    });
    return strftime_now;
  }
  return Value::Undefined();
}

}  // namespace ftd::data::jinja
