// Lexer and parser for chat templates, following jinja2's lexer.py and parser.py with the
// environment transformers uses (trim_blocks, lstrip_blocks, keep_trailing_newline=False).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/data/jinja/ast.h"
#include "engine/data/utf8.h"

namespace ftd::data::jinja {
namespace {

struct SyntaxError {
  std::string message;
  Location where;
};

enum class Tok { kData, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string value;
  Location where;
  int64_t int_value = 0;
  double float_value = 0;
};

const char* TokName(Tok t) {
  switch (t) {
    case Tok::kData: return "template data";
    case Tok::kVarBegin: return "begin of print statement";
    case Tok::kVarEnd: return "end of print statement";
    case Tok::kBlockBegin: return "begin of statement block";
    case Tok::kBlockEnd: return "end of statement block";
    case Tok::kName: return "name";
    case Tok::kString: return "string";
    case Tok::kInt: return "integer";
    case Tok::kFloat: return "float";
    case Tok::kOp: return "operator";
    case Tok::kEof: return "end of template";
  }
  return "token";
}

std::string Describe(const Token& t) {
  if (t.type == Tok::kName || t.type == Tok::kOp) return "'" + t.value + "'";
  return TokName(t.type);
}

// Python's str.isspace for the code point at s[pos]; `len` gets its byte length.
bool WhitespaceAt(std::string_view s, size_t pos, size_t* len) {
  const char32_t cp = DecodeUtf8At(s, pos, len);
  return IsPythonWhitespace(cp);
}

// s.rstrip() (Python whitespace).
std::string_view RStrip(std::string_view s) {
  size_t keep = 0, pos = 0;
  while (pos < s.size()) {
    size_t len = 1;
    const bool ws = WhitespaceAt(s, pos, &len);
    pos += len;
    if (!ws) keep = pos;
  }
  return s.substr(0, keep);
}

bool AllWhitespace(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len = 1;
    if (!WhitespaceAt(s, pos, &len)) return false;
    pos += len;
  }
  return true;
}

size_t SkipWhitespace(std::string_view s, size_t pos) {
  while (pos < s.size()) {
    size_t len = 1;
    if (!WhitespaceAt(s, pos, &len)) break;
    pos += len;
  }
  return pos;
}

bool IsNameStart(unsigned char c) { return std::isalpha(c) || c == '_' || c >= 0x80; }
bool IsNameChar(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

class Lexer {
 public:
  explicit Lexer(std::string_view raw) {
    // Newlines normalized to \n; one trailing newline dropped (keep_trailing_newline=False).
    src_.reserve(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\r') {
        src_.push_back('\n');
        if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
      } else {
        src_.push_back(raw[i]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<Token> Run() {
    const std::string_view s = src_;
    size_t pos = 0;
    bool line_starting = true;
    while (pos < s.size()) {
      size_t tag = FindTagStart(pos);
      if (tag == std::string_view::npos) {
        Emit(Tok::kData, std::string(s.substr(pos)), pos);
        break;
      }
      const char kind = s[tag + 1];
      const char sign = tag + 2 < s.size() && (s[tag + 2] == '-' || s[tag + 2] == '+') ? s[tag + 2] : 0;
      std::string_view text = s.substr(pos, tag - pos);
      text = StripBefore(text, sign, kind != '{', line_starting);
      if (!text.empty()) Emit(Tok::kData, std::string(text), pos);
      size_t after = tag + 2 + (sign ? 1 : 0);
      if (kind == '%') {
        size_t raw_end = 0;
        if (MatchRawBegin(after, &raw_end)) {
          pos = LexRaw(raw_end, &line_starting);
          continue;
        }
      }
      if (kind == '#') {
        size_t close = s.find("#}", after);
        if (close == std::string_view::npos) throw SyntaxError{"Missing end of comment tag", Loc(tag)};
        size_t end = close + 2;
        if (close > after && s[close - 1] == '-') {
          end = SkipWhitespace(s, end);
        } else if (!(close > after && s[close - 1] == '+')) {
          if (end < s.size() && s[end] == '\n') ++end;  // trim_blocks
        }
        line_starting = s[end - 1] == '\n';
        pos = end;
        continue;
      }
      Emit(kind == '%' ? Tok::kBlockBegin : Tok::kVarBegin, "", tag);
      pos = LexTag(after, kind == '%', &line_starting);
    }
    Emit(Tok::kEof, "", s.size());
    return std::move(tokens_);
  }

  Location Loc(size_t pos) const {
    size_t lo = 0, hi = line_starts_.size();
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      if (line_starts_[mid] <= pos) lo = mid; else hi = mid;
    }
    // Columns count code points, as an editor shows them.
    int column = 1;
    for (size_t i = line_starts_[lo]; i < pos && i < src_.size(); ++i) {
      if ((static_cast<unsigned char>(src_[i]) & 0xC0) != 0x80) ++column;
    }
    return Location{static_cast<int>(lo + 1), column};
  }

 private:
  size_t FindTagStart(size_t pos) const {
    const std::string_view s = src_;
    while (true) {
      size_t brace = s.find('{', pos);
      if (brace == std::string_view::npos || brace + 1 >= s.size()) return std::string_view::npos;
      const char next = s[brace + 1];
      if (next == '{' || next == '%' || next == '#') return brace;
      pos = brace + 1;
    }
  }

  // The data before a tag, with `-` (strip all whitespace) or lstrip_blocks applied.
  std::string_view StripBefore(std::string_view text, char sign, bool lstrip_applies, bool line_starting) const {
    if (sign == '-') return RStrip(text);
    if (sign == '+' || !lstrip_applies) return text;
    const size_t newline = text.rfind('\n');
    const size_t l_pos = newline == std::string_view::npos ? 0 : newline + 1;
    if ((l_pos > 0 || line_starting) && l_pos < text.size() && AllWhitespace(text.substr(l_pos))) {
      return text.substr(0, l_pos);
    }
    return text;
  }

  bool MatchRawBegin(size_t pos, size_t* end) const {
    const std::string_view s = src_;
    pos = SkipWhitespace(s, pos);
    if (s.compare(pos, 3, "raw") != 0 || (pos + 3 < s.size() && IsNameChar(s[pos + 3]))) return false;
    pos = SkipWhitespace(s, pos + 3);
    if (s.compare(pos, 3, "-%}") == 0) {
      *end = SkipWhitespace(s, pos + 3);
      return true;
    }
    if (s.compare(pos, 2, "%}") == 0) {
      *end = pos + 2;
      return true;
    }
    return false;
  }

  size_t LexRaw(size_t pos, bool* line_starting) {
    const std::string_view s = src_;
    size_t search = pos;
    while (true) {
      size_t tag = s.find("{%", search);
      if (tag == std::string_view::npos) throw SyntaxError{"Missing end of raw directive", Loc(pos)};
      size_t p = tag + 2;
      const char sign = p < s.size() && (s[p] == '-' || s[p] == '+') ? s[p] : 0;
      if (sign) ++p;
      p = SkipWhitespace(s, p);
      if (s.compare(p, 6, "endraw") != 0) {
        search = tag + 2;
        continue;
      }
      p = SkipWhitespace(s, p + 6);
      size_t end;
      if (s.compare(p, 3, "+%}") == 0) {
        end = p + 3;
      } else if (s.compare(p, 3, "-%}") == 0) {
        end = SkipWhitespace(s, p + 3);
      } else if (s.compare(p, 2, "%}") == 0) {
        end = p + 2;
        if (end < s.size() && s[end] == '\n') ++end;
      } else {
        search = tag + 2;
        continue;
      }
      std::string_view text = StripBefore(s.substr(pos, tag - pos), sign, true, false);
      if (!text.empty()) Emit(Tok::kData, std::string(text), pos);
      *line_starting = s[end - 1] == '\n';
      return end;
    }
  }

  size_t LexTag(size_t pos, bool block, bool* line_starting) {
    const std::string_view s = src_;
    std::vector<char> balance;
    const size_t begin = pos;
    while (true) {
      pos = SkipWhitespace(s, pos);
      if (pos >= s.size()) {
        throw SyntaxError{block ? "unexpected end of template inside a {% %} block (missing '%}')"
                                : "unexpected end of template inside {{ }} (missing '}}')",
                          Loc(begin)};
      }
      if (balance.empty()) {
        size_t end = 0;
        if (block) {
          if (s.compare(pos, 3, "+%}") == 0) {
            end = pos + 3;
          } else if (s.compare(pos, 3, "-%}") == 0) {
            end = SkipWhitespace(s, pos + 3);
          } else if (s.compare(pos, 2, "%}") == 0) {
            end = pos + 2;
            if (end < s.size() && s[end] == '\n') ++end;  // trim_blocks
          }
        } else {
          if (s.compare(pos, 3, "-}}") == 0) {
            end = SkipWhitespace(s, pos + 3);
          } else if (s.compare(pos, 2, "}}") == 0) {
            end = pos + 2;
          }
        }
        if (end) {
          Emit(block ? Tok::kBlockEnd : Tok::kVarEnd, "", pos);
          *line_starting = s[end - 1] == '\n';
          return end;
        }
      }
      const unsigned char c = s[pos];
      if (std::isdigit(c)) {
        pos = LexNumber(pos);
        continue;
      }
      if (IsNameStart(c)) {
        size_t end = pos + 1;
        while (end < s.size() && IsNameChar(s[end])) ++end;
        Emit(Tok::kName, std::string(s.substr(pos, end - pos)), pos);
        pos = end;
        continue;
      }
      if (c == '\'' || c == '"') {
        pos = LexString(pos);
        continue;
      }
      static const char* const kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                         "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};
      const char* op = nullptr;
      for (const char* candidate : kOps) {
        if (s.compare(pos, std::strlen(candidate), candidate) == 0) {
          op = candidate;
          break;
        }
      }
      if (!op) throw SyntaxError{absl::StrCat("unexpected char '", std::string(1, c), "'"), Loc(pos)};
      const std::string o = op;
      if (o == "(" || o == "[" || o == "{") {
        balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
      } else if (o == ")" || o == "]" || o == "}") {
        if (balance.empty()) throw SyntaxError{"unexpected '" + o + "'", Loc(pos)};
        if (balance.back() != o[0]) {
          throw SyntaxError{absl::StrCat("unexpected '", o, "', expected '", std::string(1, balance.back()), "'"),
                            Loc(pos)};
        }
        balance.pop_back();
      }
      Emit(Tok::kOp, o, pos);
      pos += o.size();
    }
  }

  size_t LexNumber(size_t pos) {
    const std::string_view s = src_;
    const auto digits = [&](size_t p) {
      size_t q = p;
      while (q < s.size() && (std::isdigit(static_cast<unsigned char>(s[q])) ||
                              (s[q] == '_' && q + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[q + 1])) &&
                               q > p))) {
        ++q;
      }
      return q;
    };
    const size_t int_end = digits(pos);
    size_t end = int_end;
    bool is_float = false;
    if (pos == 0 || s[pos - 1] != '.') {
      if (end < s.size() && s[end] == '.' && end + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[end + 1]))) {
        end = digits(end + 1);
        is_float = true;
      }
      if (end < s.size() && (s[end] == 'e' || s[end] == 'E')) {
        size_t q = end + 1;
        if (q < s.size() && (s[q] == '+' || s[q] == '-')) ++q;
        if (q < s.size() && std::isdigit(static_cast<unsigned char>(s[q]))) {
          end = digits(q);
          is_float = true;
        }
      }
    }
    std::string text(s.substr(pos, end - pos));
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    if (is_float) {
      Token t{Tok::kFloat, text, Loc(pos)};
      t.float_value = std::strtod(text.c_str(), nullptr);
      tokens_.push_back(std::move(t));
      return end;
    }
    // Integers: decimal, or 0b / 0o / 0x.
    int base = 10;
    size_t digits_from = 0;
    if (text == "0" && int_end < s.size() && std::strchr("bBoOxX", s[int_end])) {
      const char p = std::tolower(s[int_end]);
      base = p == 'b' ? 2 : p == 'o' ? 8 : 16;
      size_t q = int_end + 1;
      while (q < s.size() && (std::isxdigit(static_cast<unsigned char>(s[q])) || s[q] == '_')) ++q;
      text = std::string(s.substr(int_end + 1, q - int_end - 1));
      text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
      end = q;
    } else if (text.size() > 1 && text[0] == '0' && text.find_first_not_of('0') != std::string::npos) {
      throw SyntaxError{"leading zeros in decimal integer literals are not permitted", Loc(pos)};
    }
    Token t{Tok::kInt, text, Loc(pos)};
    errno = 0;
    t.int_value = std::strtoll(text.c_str() + digits_from, nullptr, base);
    if (errno == ERANGE) throw SyntaxError{"integer literal out of range", Loc(pos)};
    tokens_.push_back(std::move(t));
    return end;
  }

  size_t LexString(size_t pos) {
    const std::string_view s = src_;
    const char quote = s[pos];
    size_t p = pos + 1;
    std::string out;
    while (true) {
      if (p >= s.size()) throw SyntaxError{"unexpected end of string literal", Loc(pos)};
      const char c = s[p];
      if (c == quote) break;
      if (c != '\\') {
        out.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= s.size()) throw SyntaxError{"unexpected end of string literal", Loc(pos)};
      const char e = s[p + 1];
      p += 2;
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          if (p + n > s.size()) throw SyntaxError{"truncated \\" + std::string(1, e) + " escape", Loc(pos)};
          char32_t cp = 0;
          for (size_t i = 0; i < n; ++i) {
            const char h = s[p + i];
            if (!std::isxdigit(static_cast<unsigned char>(h))) {
              throw SyntaxError{"truncated \\" + std::string(1, e) + " escape", Loc(pos)};
            }
            cp = cp * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : std::tolower(h) - 'a' + 10);
          }
          if (cp > 0x10FFFF) throw SyntaxError{"illegal Unicode character in escape", Loc(pos)};
          AppendUtf8(cp, &out);
          p += n;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            char32_t cp = e - '0';
            for (int i = 0; i < 2 && p < s.size() && s[p] >= '0' && s[p] <= '7'; ++i) cp = cp * 8 + (s[p++] - '0');
            AppendUtf8(cp, &out);
          } else if (e == 'N') {
            throw SyntaxError{"\\N{...} escapes are not supported", Loc(pos)};
          } else {
            out.push_back('\\');  // unknown escapes stay as written, as in Python
            out.push_back(e);
          }
      }
    }
    Emit(Tok::kString, std::move(out), pos);
    return p + 1;
  }

  void Emit(Tok type, std::string value, size_t pos) { tokens_.push_back(Token{type, std::move(value), Loc(pos)}); }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

// Recursive descent over the tokens, after jinja2/parser.py.
class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  std::unique_ptr<Node> ParseRoot() {
    auto root = Subparse({});
    if (Cur().type != Tok::kEof) Error("unexpected " + Describe(Cur()));
    return root;
  }

  bool has_generation = false;

 private:
  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Look() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  const Token& Next() {
    const Token& t = tokens_[pos_];
    if (pos_ + 1 < tokens_.size()) ++pos_;
    return t;
  }
  bool IsOp(const char* op) const { return Cur().type == Tok::kOp && Cur().value == op; }
  bool IsName(const char* name) const { return Cur().type == Tok::kName && Cur().value == name; }
  bool SkipOp(const char* op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(const char* name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }
  [[noreturn]] void Error(const std::string& message) const { throw SyntaxError{message, Cur().where}; }
  const Token& ExpectOp(const char* op) {
    if (!IsOp(op)) Error(absl::StrCat("expected '", op, "', got ", Describe(Cur())));
    return Next();
  }
  const Token& Expect(Tok type) {
    if (Cur().type != type) Error(absl::StrCat("expected ", TokName(type), ", got ", Describe(Cur())));
    return Next();
  }

  // Statements until one of `end_names` begins a block (left unconsumed: the block's name is current).
  std::unique_ptr<Node> Subparse(const std::vector<std::string>& end_names) {
    auto body = std::make_unique<Node>();
    body->kind = Node::Kind::kBody;
    body->where = Cur().where;
    while (Cur().type != Tok::kEof) {
      const Token& t = Cur();
      if (t.type == Tok::kData) {
        auto text = std::make_unique<Node>();
        text->kind = Node::Kind::kText;
        text->where = t.where;
        text->text = t.value;
        body->children.push_back(std::move(text));
        Next();
      } else if (t.type == Tok::kVarBegin) {
        Next();
        auto print = std::make_unique<Node>();
        print->kind = Node::Kind::kPrint;
        print->where = Cur().where;
        print->expr = ParseTuple(true, {}, false);
        Expect(Tok::kVarEnd);
        body->children.push_back(std::move(print));
      } else if (t.type == Tok::kBlockBegin) {
        Next();
        if (Cur().type == Tok::kName) {
          for (const auto& end : end_names) {
            if (Cur().value == end) return body;
          }
        }
        body->children.push_back(ParseStatement());
        Expect(Tok::kBlockEnd);
      } else {
        Error("unexpected " + Describe(t));
      }
    }
    if (!end_names.empty()) {
      std::string expected;
      for (const auto& end : end_names) absl::StrAppend(&expected, expected.empty() ? "" : " or ", "'", end, "'");
      Error("unexpected end of template: a block is not closed (expected " + expected + ")");
    }
    return body;
  }

  // `{% ... %}` body after the tag, up to one of end_names; drop_needle consumes the end tag's name.
  std::unique_ptr<Node> ParseStatements(const std::vector<std::string>& end_names, bool drop_needle) {
    SkipOp(":");
    Expect(Tok::kBlockEnd);
    auto body = Subparse(end_names);
    if (drop_needle) Next();
    return body;
  }

  std::unique_ptr<Node> NewNode(Node::Kind kind, Location where) {
    auto node = std::make_unique<Node>();
    node->kind = kind;
    node->where = where;
    return node;
  }

  std::unique_ptr<Node> ParseStatement() {
    const Token& t = Cur();
    if (t.type != Tok::kName) Error("tag name expected, got " + Describe(t));
    const std::string name = t.value;
    const Location where = t.where;
    if (name == "if") return ParseIf();
    if (name == "for") return ParseFor();
    if (name == "set") return ParseSet();
    if (name == "macro") return ParseMacro();
    if (name == "filter") {
      Next();
      auto node = NewNode(Node::Kind::kFilterBlock, where);
      node->filter = ParseFilter(nullptr, true);
      node->body = ParseStatements({"endfilter"}, true);
      return node;
    }
    if (name == "with") {
      Next();
      auto node = NewNode(Node::Kind::kWith, where);
      while (Cur().type != Tok::kBlockEnd) {
        if (!node->targets.empty()) ExpectOp(",");
        node->targets.push_back(Expect(Tok::kName).value);
        ExpectOp("=");
        node->values.push_back(ParseExpression(true));
      }
      node->body = ParseStatements({"endwith"}, true);
      return node;
    }
    if (name == "break" || name == "continue") {
      Next();
      return NewNode(name == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, where);
    }
    if (name == "generation") {
      Next();
      has_generation = true;
      auto node = NewNode(Node::Kind::kGeneration, where);
      node->body = ParseStatements({"endgeneration"}, true);
      return node;
    }
    if (name == "raw") Error("malformed raw block");
    static const char* const kUnsupported[] = {"include", "extends", "import", "from", "block", "call", "autoescape",
                                               "print", "do"};
    for (const char* unsupported : kUnsupported) {
      if (name == unsupported) {
        Error("the '" + name + "' statement is not available to chat templates (transformers has no loader for it)");
      }
    }
    if (name.rfind("end", 0) == 0 || name == "else" || name == "elif") {
      Error("unexpected '" + name + "': no block is open that it could close or continue");
    }
    Error("Encountered unknown tag '" + name + "'");
  }

  std::unique_ptr<Node> ParseIf() {
    auto node = NewNode(Node::Kind::kIf, Cur().where);
    Next();
    while (true) {
      node->conds.push_back(ParseTuple(false, {}, false));
      node->bodies.push_back(ParseStatements({"elif", "else", "endif"}, false));
      const std::string tag = Next().value;
      if (tag == "elif") continue;
      if (tag == "else") node->else_body = ParseStatements({"endif"}, true);
      break;
    }
    return node;
  }

  std::unique_ptr<Node> ParseFor() {
    auto node = NewNode(Node::Kind::kFor, Cur().where);
    Next();
    ParseAssignTargets(node.get(), {"in"});
    if (!SkipName("in")) Error("expected 'in' after the for loop's target, got " + Describe(Cur()));
    node->expr = ParseTuple(false, {"recursive"}, false);
    if (SkipName("if")) node->filter = ParseExpression(true);
    if (IsName("recursive")) Error("recursive for loops are not supported");
    node->body = ParseStatements({"endfor", "else"}, false);
    if (Next().value == "else") node->else_body = ParseStatements({"endfor"}, true);
    return node;
  }

  // Names or a tuple of names (for / set targets).
  void ParseAssignTargets(Node* node, const std::vector<std::string>& end_names) {
    const bool parenthesized = SkipOp("(");
    while (true) {
      const Token& name = Cur();
      if (name.type != Tok::kName) Error("can't assign to " + Describe(name));
      for (const char* keyword : {"true", "false", "none", "True", "False", "None"}) {
        if (name.value == keyword) Error("can't assign to '" + name.value + "'");
      }
      node->targets.push_back(name.value);
      Next();
      if (!SkipOp(",")) break;
      node->tuple_target = true;
      if (Cur().type != Tok::kName) break;  // trailing comma
    }
    if (parenthesized) {
      ExpectOp(")");
      node->tuple_target = node->tuple_target || node->targets.size() > 1;
    }
  }

  std::unique_ptr<Node> ParseSet() {
    const Location where = Cur().where;
    Next();
    if (Cur().type == Tok::kName && Look().type == Tok::kOp && Look().value == ".") {
      auto node = NewNode(Node::Kind::kSet, where);
      node->targets.push_back(Next().value);
      Next();
      node->ns_attr = Expect(Tok::kName).value;
      ExpectOp("=");
      node->expr = ParseTuple(true, {}, false);
      return node;
    }
    auto node = NewNode(Node::Kind::kSet, where);
    ParseAssignTargets(node.get(), {});
    if (SkipOp("=")) {
      node->expr = ParseTuple(true, {}, false);
      return node;
    }
    node->kind = Node::Kind::kSetBlock;
    if (node->tuple_target) Error("a block set assigns one name");
    if (IsOp("|")) node->filter = ParseFilter(nullptr, false);
    node->body = ParseStatements({"endset"}, true);
    return node;
  }

  std::unique_ptr<Node> ParseMacro() {
    auto node = NewNode(Node::Kind::kMacro, Cur().where);
    Next();
    node->text = Expect(Tok::kName).value;
    ExpectOp("(");
    while (!IsOp(")")) {
      if (!node->params.empty()) ExpectOp(",");
      if (IsOp(")")) break;
      node->params.push_back(Expect(Tok::kName).value);
      if (SkipOp("=")) {
        node->defaults.push_back(ParseExpression(true));
      } else {
        for (const auto& d : node->defaults) {
          if (d) Error("non-default argument follows default argument");
        }
        node->defaults.push_back(nullptr);
      }
    }
    ExpectOp(")");
    node->body = ParseStatements({"endmacro"}, true);
    return node;
  }

  ExprPtr NewExpr(Expr::Kind kind, Location where) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->where = where;
    return e;
  }

  bool IsTupleEnd(const std::vector<std::string>& extra_end) const {
    const Token& t = Cur();
    if (t.type == Tok::kVarEnd || t.type == Tok::kBlockEnd || t.type == Tok::kEof) return true;
    if (t.type == Tok::kOp && t.value == ")") return true;
    if (t.type == Tok::kName) {
      for (const auto& end : extra_end) {
        if (t.value == end) return true;
      }
    }
    return false;
  }

  ExprPtr ParseTuple(bool with_condexpr, const std::vector<std::string>& extra_end, bool explicit_parens) {
    const Location where = Cur().where;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) ExpectOp(",");
      if (IsTupleEnd(extra_end)) break;
      args.push_back(ParseExpression(with_condexpr));
      if (IsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parens) Error("Expected an expression, got " + Describe(Cur()));
    }
    auto tuple = NewExpr(Expr::Kind::kTuple, where);
    tuple->items = std::move(args);
    return tuple;
  }

  ExprPtr ParseExpression(bool with_condexpr) { return with_condexpr ? ParseCondExpr() : ParseOr(); }

  ExprPtr ParseCondExpr() {
    ExprPtr expr1 = ParseOr();
    while (IsName("if")) {
      const Location where = Next().where;
      auto cond = NewExpr(Expr::Kind::kCondition, where);
      cond->a = ParseOr();
      cond->b = std::move(expr1);
      if (SkipName("else")) cond->c = ParseCondExpr();
      expr1 = std::move(cond);
    }
    return expr1;
  }

  ExprPtr ParseOr() {
    ExprPtr left = ParseAnd();
    while (IsName("or")) {
      auto node = NewExpr(Expr::Kind::kOr, Next().where);
      node->a = std::move(left);
      node->b = ParseAnd();
      left = std::move(node);
    }
    return left;
  }

  ExprPtr ParseAnd() {
    ExprPtr left = ParseNot();
    while (IsName("and")) {
      auto node = NewExpr(Expr::Kind::kAnd, Next().where);
      node->a = std::move(left);
      node->b = ParseNot();
      left = std::move(node);
    }
    return left;
  }

  ExprPtr ParseNot() {
    if (IsName("not")) {
      auto node = NewExpr(Expr::Kind::kNot, Next().where);
      node->a = ParseNot();
      return node;
    }
    return ParseCompare();
  }

  ExprPtr ParseCompare() {
    const Location where = Cur().where;
    ExprPtr expr = ParseMath1();
    std::vector<std::string> ops;
    std::vector<ExprPtr> operands;
    while (true) {
      if (Cur().type == Tok::kOp && (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" ||
                                     Cur().value == "<=" || Cur().value == ">" || Cur().value == ">=")) {
        ops.push_back(Next().value);
      } else if (SkipName("in")) {
        ops.push_back("in");
      } else if (IsName("not") && Look().type == Tok::kName && Look().value == "in") {
        Next();
        Next();
        ops.push_back("not in");
      } else {
        break;
      }
      operands.push_back(ParseMath1());
    }
    if (ops.empty()) return expr;
    auto node = NewExpr(Expr::Kind::kCompare, where);
    node->a = std::move(expr);
    node->ops = std::move(ops);
    node->items = std::move(operands);
    return node;
  }

  ExprPtr Binary(const std::string& op, ExprPtr left, ExprPtr right, Location where) {
    auto node = NewExpr(Expr::Kind::kBinary, where);
    node->name = op;
    node->a = std::move(left);
    node->b = std::move(right);
    return node;
  }

  ExprPtr ParseMath1() {
    ExprPtr left = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const Token& op = Next();
      left = Binary(op.value, std::move(left), ParseConcat(), op.where);
    }
    return left;
  }

  ExprPtr ParseConcat() {
    ExprPtr left = ParseMath2();
    while (IsOp("~")) {
      const Token& op = Next();
      left = Binary("~", std::move(left), ParseMath2(), op.where);
    }
    return left;
  }

  ExprPtr ParseMath2() {
    ExprPtr left = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& op = Next();
      left = Binary(op.value, std::move(left), ParsePow(), op.where);
    }
    return left;
  }

  ExprPtr ParsePow() {
    ExprPtr left = ParseUnary(true);
    while (IsOp("**")) {
      const Token& op = Next();
      left = Binary("**", std::move(left), ParseUnary(true), op.where);
    }
    return left;
  }

  ExprPtr ParseUnary(bool with_filter) {
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const Token& op = Next();
      node = NewExpr(op.value == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos, op.where);
      node->a = ParseUnary(false);
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token& t = Cur();
    const Location where = t.where;
    if (t.type == Tok::kName) {
      auto node = NewExpr(Expr::Kind::kLiteral, where);
      if (t.value == "true" || t.value == "True") {
        node->value = Value(true);
      } else if (t.value == "false" || t.value == "False") {
        node->value = Value(false);
      } else if (t.value == "none" || t.value == "None") {
        node->value = Value::None();
      } else {
        node->kind = Expr::Kind::kName;
        node->name = t.value;
      }
      Next();
      return node;
    }
    if (t.type == Tok::kString) {
      std::string text;
      while (Cur().type == Tok::kString) text += Next().value;  // adjacent literals concatenate
      auto node = NewExpr(Expr::Kind::kLiteral, where);
      node->value = Value(std::move(text));
      return node;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      auto node = NewExpr(Expr::Kind::kLiteral, where);
      node->value = t.type == Tok::kInt ? Value(t.int_value) : Value(t.float_value);
      Next();
      return node;
    }
    if (IsOp("(")) {
      Next();
      ExprPtr inner = ParseTuple(true, {}, true);
      ExpectOp(")");
      return inner;
    }
    if (IsOp("[")) {
      Next();
      auto node = NewExpr(Expr::Kind::kList, where);
      while (!IsOp("]")) {
        if (!node->items.empty()) ExpectOp(",");
        if (IsOp("]")) break;
        node->items.push_back(ParseExpression(true));
      }
      ExpectOp("]");
      return node;
    }
    if (IsOp("{")) {
      Next();
      auto node = NewExpr(Expr::Kind::kDict, where);
      while (!IsOp("}")) {
        if (!node->items.empty()) ExpectOp(",");
        if (IsOp("}")) break;
        node->items.push_back(ParseExpression(true));
        ExpectOp(":");
        node->items.push_back(ParseExpression(true));
      }
      ExpectOp("}");
      return node;
    }
    Error("unexpected " + Describe(t));
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".") || IsOp("[")) {
        node = ParseSubscript(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        node = ParseFilter(std::move(node), false);
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOp("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    const Token& t = Next();
    if (t.value == ".") {
      const Token& attr = Cur();
      if (attr.type == Tok::kName) {
        auto get = NewExpr(Expr::Kind::kGetAttr, t.where);
        get->a = std::move(node);
        get->name = Next().value;
        return get;
      }
      if (attr.type == Tok::kInt) {
        auto get = NewExpr(Expr::Kind::kGetItem, t.where);
        get->a = std::move(node);
        get->b = NewExpr(Expr::Kind::kLiteral, attr.where);
        get->b->value = Value(attr.int_value);
        Next();
        return get;
      }
      Error("expected name or number after '.', got " + Describe(attr));
    }
    std::vector<ExprPtr> args;
    while (!IsOp("]")) {
      if (!args.empty()) ExpectOp(",");
      args.push_back(ParseSubscribed());
    }
    ExpectOp("]");
    if (args.size() == 1 && args[0]->kind == Expr::Kind::kSlice) {
      args[0]->a = std::move(node);
      return std::move(args[0]);
    }
    auto get = NewExpr(Expr::Kind::kGetItem, t.where);
    get->a = std::move(node);
    if (args.size() == 1) {
      get->b = std::move(args[0]);
    } else {
      get->b = NewExpr(Expr::Kind::kTuple, t.where);
      get->b->items = std::move(args);
    }
    return get;
  }

  ExprPtr ParseSubscribed() {
    const Location where = Cur().where;
    ExprPtr first;
    if (!IsOp(":")) {
      first = ParseExpression(true);
      if (!IsOp(":")) return first;
    }
    Next();  // ':'
    auto slice = NewExpr(Expr::Kind::kSlice, where);
    slice->b = std::move(first);
    if (!IsOp("]") && !IsOp(",") && !IsOp(":")) slice->c = ParseExpression(true);
    if (SkipOp(":")) {
      if (!IsOp("]") && !IsOp(",")) slice->d = ParseExpression(true);
    }
    return slice;
  }

  void ParseCallArgs(CallArgs* args) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (!args->positional.empty() || !args->keyword.empty()) {
        ExpectOp(",");
        if (IsOp(")")) break;
      }
      if (IsOp("*") || IsOp("**")) Error("*args and **kwargs in calls are not supported");
      if (Cur().type == Tok::kName && Look().type == Tok::kOp && Look().value == "=") {
        std::string key = Next().value;
        Next();
        args->keyword.emplace_back(std::move(key), ParseExpression(true));
      } else {
        if (!args->keyword.empty()) Error("positional argument follows keyword argument");
        args->positional.push_back(ParseExpression(true));
      }
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr node) {
    auto call = NewExpr(Expr::Kind::kCall, node->where);  // errors point at the callee
    call->a = std::move(node);
    ParseCallArgs(&call->args);
    return call;
  }

  ExprPtr ParseFilter(ExprPtr node, bool start_inline) {
    while (IsOp("|") || start_inline) {
      if (!start_inline) Next();
      start_inline = false;
      const Token& name = Expect(Tok::kName);
      auto filter = NewExpr(Expr::Kind::kFilter, name.where);
      filter->name = name.value;
      while (IsOp(".")) {
        Next();
        filter->name += "." + Expect(Tok::kName).value;
      }
      if (IsOp("(")) ParseCallArgs(&filter->args);
      filter->a = std::move(node);
      node = std::move(filter);
    }
    return node;
  }

  ExprPtr ParseTest(ExprPtr node) {
    Next();  // 'is'
    auto test = NewExpr(Expr::Kind::kTest, Cur().where);
    if (SkipName("not")) test->negated = true;
    test->name = Expect(Tok::kName).value;
    while (IsOp(".")) {
      Next();
      test->name += "." + Expect(Tok::kName).value;
    }
    if (IsOp("(")) {
      ParseCallArgs(&test->args);
    } else {
      const Token& t = Cur();
      const bool starts_arg = t.type == Tok::kName || t.type == Tok::kString || t.type == Tok::kInt ||
                              t.type == Tok::kFloat || (t.type == Tok::kOp && (t.value == "(" || t.value == "[" ||
                                                                               t.value == "{"));
      if (starts_arg && !IsName("else") && !IsName("or") && !IsName("and")) {
        if (IsName("is")) Error("You cannot chain multiple tests with is");
        ExprPtr arg = ParsePrimary();
        test->args.positional.push_back(ParsePostfix(std::move(arg)));
      }
    }
    test->a = std::move(node);
    return test;
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
};

void CollectNames(const Expr* e, std::vector<std::string>* names) {
  if (e == nullptr) return;
  if (e->kind == Expr::Kind::kName) names->push_back(e->name);
  for (const Expr* child : {e->a.get(), e->b.get(), e->c.get(), e->d.get()}) CollectNames(child, names);
  for (const auto& item : e->items) CollectNames(item.get(), names);
  for (const auto& arg : e->args.positional) CollectNames(arg.get(), names);
  for (const auto& [key, arg] : e->args.keyword) CollectNames(arg.get(), names);
}

struct ScopeScan {
  std::vector<std::string> read_first;   // read at this scope's level before any assignment
  std::vector<std::string> assigned;     // assigned unconditionally at this scope's level
  std::vector<std::string> conditional;  // assigned inside an if at this scope's level
  std::vector<std::string> refs;         // every name read or assigned at this scope's level
  static bool Has(const std::vector<std::string>& v, const std::string& n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  }
  void ReadName(const std::string& n) {
    refs.push_back(n);
    if (!Has(assigned, n) && !Has(conditional, n)) read_first.push_back(n);
  }
  void Read(const Expr* e) {
    std::vector<std::string> names;
    CollectNames(e, &names);
    for (const auto& n : names) ReadName(n);
  }
  void Assign(const std::string& n, bool conditionally) {
    refs.push_back(n);
    (conditionally ? conditional : assigned).push_back(n);
  }
  // Statements of one scope; nested scopes are not entered.
  void Walk(const Node& node, bool conditionally) {
    switch (node.kind) {
      case Node::Kind::kBody:
        for (const auto& child : node.children) Walk(*child, conditionally);
        break;
      case Node::Kind::kPrint: Read(node.expr.get()); break;
      case Node::Kind::kIf:
        for (size_t i = 0; i < node.conds.size(); ++i) {
          Read(node.conds[i].get());
          Walk(*node.bodies[i], true);
        }
        if (node.else_body) Walk(*node.else_body, true);
        break;
      case Node::Kind::kFor: Read(node.expr.get()); break;
      case Node::Kind::kSet:
        Read(node.expr.get());
        if (!node.ns_attr.empty()) {
          ReadName(node.targets[0]);
        } else {
          for (const auto& t : node.targets) Assign(t, conditionally);
        }
        break;
      case Node::Kind::kSetBlock: Assign(node.targets[0], conditionally); break;
      case Node::Kind::kMacro: Assign(node.text, conditionally); break;
      case Node::Kind::kFilterBlock: Read(node.filter.get()); break;
      case Node::Kind::kWith:
        for (const auto& v : node.values) Read(v.get());
        break;
      default: break;
    }
  }
  std::vector<std::string> Undefined() const {
    std::vector<std::string> out;
    for (const auto& n : assigned) {
      if (!Has(read_first, n) && !Has(conditional, n) && !Has(out, n)) out.push_back(n);
    }
    return out;
  }
};

// A name a scope assigns before reading it is the scope's own variable: Undefined until
// assigned, unless an enclosing scope refers to the name (jinja2 then aliases the outer variable).
void AnnotateNode(Node* node, const std::vector<std::string>& outer_refs) {
  if (node == nullptr) return;
  bool opens_scope = false;
  switch (node->kind) {
    case Node::Kind::kFor:
    case Node::Kind::kMacro:
    case Node::Kind::kFilterBlock:
    case Node::Kind::kSetBlock:
    case Node::Kind::kWith:
    case Node::Kind::kGeneration: opens_scope = true; break;
    default: break;
  }
  if (!opens_scope) {
    AnnotateNode(node->body.get(), outer_refs);
    AnnotateNode(node->else_body.get(), outer_refs);
    for (auto& child : node->children) AnnotateNode(child.get(), outer_refs);
    for (auto& branch : node->bodies) AnnotateNode(branch.get(), outer_refs);
    return;
  }
  ScopeScan scan;
  scan.Walk(*node->body, false);
  for (const auto& name : scan.Undefined()) {
    if (!ScopeScan::Has(outer_refs, name)) node->scope_undefined.push_back(name);
  }
  std::vector<std::string> refs = outer_refs;
  refs.insert(refs.end(), scan.refs.begin(), scan.refs.end());
  refs.insert(refs.end(), node->targets.begin(), node->targets.end());
  refs.insert(refs.end(), node->params.begin(), node->params.end());
  if (node->kind == Node::Kind::kFor) refs.push_back("loop");
  AnnotateNode(node->body.get(), refs);
  AnnotateNode(node->else_body.get(), outer_refs);
}

}  // namespace

void AnnotateScopes(Node* root) {
  ScopeScan scan;
  scan.Walk(*root, false);
  root->scope_undefined = scan.Undefined();
  for (auto& child : root->children) AnnotateNode(child.get(), scan.refs);
}

absl::StatusOr<std::unique_ptr<Node>> ParseTemplate(std::string_view source, bool* has_generation) {
  try {
    Lexer lexer(source);
    Parser parser(lexer.Run());
    auto root = parser.ParseRoot();
    AnnotateScopes(root.get());
    *has_generation = parser.has_generation;
    return root;
  } catch (const SyntaxError& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat template line ", e.where.line, ", column ", e.where.column, ": syntax error: ", e.message));
  }
}

}  // namespace ftd::data::jinja
