#include "client/job_file.h"

#include <unistd.h>

#include <iostream>
#include <iterator>
#include <sstream>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/reflection.h>
#include <yaml-cpp/yaml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace ftd::client {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// A field of `d` by its proto name or JSON (lowerCamel) name.
const FieldDescriptor* FindField(const Descriptor* d, const std::string& key) {
  if (const FieldDescriptor* f = d->FindFieldByName(key)) return f;
  for (int i = 0; i < d->field_count(); ++i) {
    if (d->field(i)->json_name() == key) return d->field(i);
  }
  return nullptr;
}

std::string KnownFields(const Descriptor* d) {
  std::vector<std::string> names;
  for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
  return absl::StrJoin(names, ", ");
}

// Sets scalar field `f` of `msg` from YAML scalar text (appends, for a list field); the error
// says what was expected.
absl::Status SetScalar(Message* msg, const FieldDescriptor* f, const std::string& text) {
  const Reflection* r = msg->GetReflection();
  const bool add = f->is_repeated();
  std::string t(absl::StripAsciiWhitespace(text));
  auto bad = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", what, ", got \"", absl::CEscape(t), "\""));
  };
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(t, &v)) return bad("an integer (32-bit)");
      add ? r->AddInt32(msg, f, v) : r->SetInt32(msg, f, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(t, &v)) return bad("an integer");
      add ? r->AddInt64(msg, f, v) : r->SetInt64(msg, f, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v;
      if (!absl::SimpleAtoi(t, &v)) return bad("a non-negative integer (32-bit)");
      add ? r->AddUInt32(msg, f, v) : r->SetUInt32(msg, f, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(t, &v)) return bad("a non-negative integer");
      add ? r->AddUInt64(msg, f, v) : r->SetUInt64(msg, f, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      double v;
      if (!absl::SimpleAtod(t, &v)) return bad("a number");
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        add ? r->AddDouble(msg, f, v) : r->SetDouble(msg, f, v);
      } else {
        add ? r->AddFloat(msg, f, static_cast<float>(v)) : r->SetFloat(msg, f, static_cast<float>(v));
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      std::string l = absl::AsciiStrToLower(t);
      if (l == "true" || l == "yes" || l == "on") {
        add ? r->AddBool(msg, f, true) : r->SetBool(msg, f, true);
      } else if (l == "false" || l == "no" || l == "off") {
        add ? r->AddBool(msg, f, false) : r->SetBool(msg, f, false);
      } else {
        return bad("true or false");
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_STRING:
      add ? r->AddString(msg, f, text) : r->SetString(msg, f, text);
      break;
    case FieldDescriptor::CPPTYPE_ENUM: {
      const auto* v = f->enum_type()->FindValueByName(absl::AsciiStrToUpper(t));
      if (v == nullptr) return bad("an enum value name");
      add ? r->AddEnum(msg, f, v) : r->SetEnum(msg, f, v);
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return absl::InvalidArgumentError("is a section, not a value (set one of its fields)");
  }
  return absl::OkStatus();
}

int LineOf(const YAML::Node& n) { return n.Mark().is_null() ? 0 : n.Mark().line + 1; }

class Converter {
 public:
  Converter(const std::string& source, std::map<std::string, int>* lines)
      : source_(source), lines_(lines) {}

  absl::Status Error(int line, const std::string& path, const std::string& what) const {
    return absl::InvalidArgumentError(
        line > 0 ? absl::StrCat(source_, ":", line, ": ", path, ": ", what)
                 : absl::StrCat(source_, ": ", path, ": ", what));
  }

  // Fills `msg` from the mapping `node`; `path` is msg's proto path ("spec").
  absl::Status FillMessage(const YAML::Node& node, Message* msg, const std::string& path,
                           const std::vector<std::string>& skip = {}) {
    if (!node.IsMap()) return Error(LineOf(node), path, "expected a mapping of fields");
    const Descriptor* d = msg->GetDescriptor();
    for (auto it = node.begin(); it != node.end(); ++it) {
      const int line = LineOf(it->first);
      if (!it->first.IsScalar()) return Error(line, path, "keys must be plain names");
      const std::string key = it->first.Scalar();
      if (std::find(skip.begin(), skip.end(), key) != skip.end()) continue;
      const FieldDescriptor* f = FindField(d, key);
      const std::string shown = path.empty() ? key : absl::StrCat(path, ".", key);
      if (f == nullptr) {
        return Error(line, shown, absl::StrCat("unknown field (", d->name(), " has: ", KnownFields(d), ")"));
      }
      const std::string field_path = path.empty() ? f->name() : absl::StrCat(path, ".", f->name());
      (*lines_)[field_path] = line;
      FTD_RETURN_IF_ERROR(FillField(it->second, msg, f, field_path, line));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status FillField(const YAML::Node& value, Message* msg, const FieldDescriptor* f,
                         const std::string& path, int line) {
    if (value.IsNull()) return absl::OkStatus();  // `key:` alone or `~`: left at its default
    if (f->is_map()) {
      // map<string, string> (labels).
      if (!value.IsMap()) return Error(line, path, "expected a mapping of key: value");
      const Descriptor* entry = f->message_type();
      for (auto it = value.begin(); it != value.end(); ++it) {
        const std::string k = it->first.Scalar();
        const int kline = LineOf(it->first);
        (*lines_)[absl::StrCat(path, ".", k)] = kline;
        if (!it->second.IsScalar()) return Error(kline, absl::StrCat(path, ".", k), "expected a string value");
        Message* e = msg->GetReflection()->AddMessage(msg, f);
        e->GetReflection()->SetString(e, entry->map_key(), k);
        e->GetReflection()->SetString(e, entry->map_value(), it->second.Scalar());
      }
      return absl::OkStatus();
    }
    if (f->is_repeated()) {
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        return Error(line, path, "lists of sections are not supported in job files");
      }
      if (!value.IsSequence()) return Error(line, path, "expected a list, e.g. [a, b] or one \"- item\" per line");
      msg->GetReflection()->ClearField(msg, f);
      for (size_t i = 0; i < value.size(); ++i) {
        const YAML::Node& item = value[i];
        const std::string item_path = absl::StrCat(path, "[", i, "]");
        const int item_line = LineOf(item) > 0 ? LineOf(item) : line;
        if (!item.IsScalar()) return Error(item_line, item_path, "expected a single value");
        absl::Status st = SetScalar(msg, f, item.Scalar());
        if (!st.ok()) return Error(item_line, item_path, std::string(st.message()));
      }
      return absl::OkStatus();
    }
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      return FillMessage(value, msg->GetReflection()->MutableMessage(msg, f), path);
    }
    if (!value.IsScalar()) return Error(line, path, "expected a single value");
    absl::Status st = SetScalar(msg, f, value.Scalar());
    if (!st.ok()) return Error(LineOf(value) > 0 ? LineOf(value) : line, path, std::string(st.message()));
    return absl::OkStatus();
  }

  std::string source_;
  std::map<std::string, int>* lines_;
};

}  // namespace

absl::StatusOr<JobFile> JobFile::Load(const std::string& path, const std::vector<std::string>& sets) {
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    absl::StatusOr<std::string> read = ReadFileToString(path);
    if (!read.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read the job file (",
                                                     read.status().message(), ")"));
    }
    text = *std::move(read);
  }
  return Parse(text, path == "-" ? "<stdin>" : path, sets);
}

absl::StatusOr<JobFile> JobFile::Parse(const std::string& text, const std::string& source,
                                       const std::vector<std::string>& sets) {
  JobFile job;
  job.source_ = source;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", e.mark.line + 1, ": not valid YAML: ", e.msg));
  }
  Converter conv(source, &job.lines_);
  auto* req = &job.request_;
  if (root.IsNull()) {
    // An empty file: --set may still build a whole spec.
  } else if (!root.IsMap()) {
    return conv.Error(LineOf(root), "(top level)", "expected a mapping of JobSpec fields");
  } else {
    const bool wrapped = root["spec"].IsDefined();
    // Top-level request fields.
    for (auto it = root.begin(); it != root.end(); ++it) {
      const std::string key = it->first.Scalar();
      const int line = LineOf(it->first);
      if (key == "labels") {
        job.lines_["labels"] = line;
        if (!it->second.IsNull() && !it->second.IsMap()) {
          return conv.Error(line, "labels", "expected a mapping of key: value");
        }
        if (it->second.IsMap()) {
          for (auto l = it->second.begin(); l != it->second.end(); ++l) {
            const int kline = LineOf(l->first);
            job.lines_[absl::StrCat("labels.", l->first.Scalar())] = kline;
            if (!l->second.IsScalar()) {
              return conv.Error(kline, absl::StrCat("labels.", l->first.Scalar()), "expected a string value");
            }
            (*req->mutable_labels())[l->first.Scalar()] = l->second.Scalar();
          }
        }
      } else if (key == "request_id" || key == "requestId") {
        job.lines_["request_id"] = line;
        if (!it->second.IsScalar()) return conv.Error(line, "request_id", "expected a string");
        req->set_request_id(it->second.Scalar());
      } else if (wrapped && key == "spec") {
        job.lines_["spec"] = line;
        FTD_RETURN_IF_ERROR(conv.FillMessage(it->second, req->mutable_spec(), "spec"));
      } else if (wrapped) {
        return conv.Error(line, key, "unknown top-level key (expected spec, labels, request_id)");
      }
    }
    if (!wrapped) {
      FTD_RETURN_IF_ERROR(conv.FillMessage(root, req->mutable_spec(), "spec",
                                           {"labels", "request_id", "requestId"}));
    }
  }

  // --set overrides, applied to the proto so that names and types are checked the same way.
  for (const std::string& set : sets) {
    const std::string where = absl::StrCat("--set ", set);
    size_t eq = set.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expected key=value"));
    }
    std::string key = set.substr(0, eq);
    const std::string value = set.substr(eq + 1);
    if (absl::StartsWith(key, "labels.")) {
      std::string k = key.substr(7);
      (*req->mutable_labels())[k] = value;
      job.sets_[absl::StrCat("labels.", k)] = where;
      continue;
    }
    if (key == "request_id") {
      req->set_request_id(value);
      job.sets_["request_id"] = where;
      continue;
    }
    if (absl::StartsWith(key, "spec.")) key = key.substr(5);
    Message* msg = req->mutable_spec();
    std::string path = "spec";
    std::vector<std::string> parts = absl::StrSplit(key, '.');
    for (size_t i = 0; i < parts.size(); ++i) {
      const FieldDescriptor* f = FindField(msg->GetDescriptor(), parts[i]);
      if (f == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": ", path, ".", parts[i], ": unknown field (", msg->GetDescriptor()->name(),
            " has: ", KnownFields(msg->GetDescriptor()), ")"));
      }
      path = absl::StrCat(path, ".", f->name());
      if (i + 1 < parts.size()) {
        if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": ", path, ": is a value, not a section"));
        }
        msg = msg->GetReflection()->MutableMessage(msg, f);
        continue;
      }
      if (f->is_repeated() && f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", path, ": is a list of sections, not a value"));
      }
      // A list field takes comma-separated items and replaces what the file had.
      if (f->is_repeated()) msg->GetReflection()->ClearField(msg, f);
      const std::vector<std::string> items =
          f->is_repeated() ? absl::StrSplit(value, ',', absl::SkipWhitespace()) : std::vector<std::string>{value};
      for (const std::string& item : items) {
        absl::Status st = SetScalar(msg, f, std::string(absl::StripAsciiWhitespace(item)));
        if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", path, ": ", st.message()));
      }
      job.sets_[path] = where;
    }
  }
  return job;
}

void JobFile::AddLabel(const std::string& key, const std::string& value, const std::string& where) {
  (*request_.mutable_labels())[key] = value;
  sets_[absl::StrCat("labels.", key)] = where;
}

std::string JobFile::Locate(const std::string& field_path, bool* exact) const {
  // "labels[team]" -> "labels.team"; "spec.x[3]" -> "spec.x".
  std::string path;
  for (size_t i = 0; i < field_path.size(); ++i) {
    char c = field_path[i];
    if (c == '[') {
      size_t close = field_path.find(']', i);
      if (close == std::string::npos) break;
      std::string inner = field_path.substr(i + 1, close - i - 1);
      if (!inner.empty() && !absl::ascii_isdigit(inner[0])) absl::StrAppend(&path, ".", inner);
      i = close;
      continue;
    }
    path.push_back(c);
  }
  if (exact != nullptr) *exact = false;
  for (std::string p = path; !p.empty();) {
    if (auto s = sets_.find(p); s != sets_.end()) {
      if (exact != nullptr) *exact = (p == path);
      return s->second;
    }
    if (auto l = lines_.find(p); l != lines_.end() && l->second > 0) {
      if (exact != nullptr) *exact = (p == path);
      return absl::StrCat(source_, ":", l->second);
    }
    size_t dot = p.rfind('.');
    if (dot == std::string::npos) break;
    p.resize(dot);
  }
  return source_;
}

std::string JobFile::Annotate(const std::string& server_message) const {
  size_t colon = server_message.find(": ");
  if (colon != std::string::npos && colon > 0) {
    const std::string field = server_message.substr(0, colon);
    // A field path: names and dots, with any text inside [] (map keys, indices).
    bool is_path = true;
    for (size_t i = 0; i < field.size() && is_path; ++i) {
      const char c = field[i];
      if (c == '[') {
        size_t close = field.find(']', i);
        is_path = close != std::string::npos;
        i = close;
        continue;
      }
      is_path = absl::ascii_isalnum(c) || c == '_' || c == '.' || c == '-';
    }
    if (is_path) {
      bool exact = false;
      std::string where = Locate(field, &exact);
      std::string out = absl::StrCat(where, ": ", server_message);
      if (!exact && where != source_) {
        absl::StrAppend(&out, " (not set in the file; this is its enclosing section)");
      } else if (!exact) {
        absl::StrAppend(&out, " (not set in the file)");
      }
      return out;
    }
  }
  return absl::StrCat(source_, ": ", server_message);
}

}  // namespace ftd::client
