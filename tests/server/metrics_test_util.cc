#include "tests/server/metrics_test_util.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {

absl::StatusOr<std::vector<Sample>> ParseExposition(const std::string& text) {
  std::vector<Sample> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("exposition line ", line_no, ": ", why, ": ", line));
    };
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == absl::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          return bad("label without =\"");
        }
        std::string key(line.substr(i, eq - i));
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value.push_back(line[j] == 'n' ? '\n' : line[j]);
          } else {
            value.push_back(line[j]);
          }
        }
        if (j >= line.size()) return bad("unterminated label value");
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return bad("unterminated label set");
      ++i;  // '}'
    }
    absl::string_view rest = absl::StripAsciiWhitespace(line.substr(i));
    std::vector<absl::string_view> parts = absl::StrSplit(rest, ' ', absl::SkipEmpty());
    if (parts.empty()) return bad("no value");
    if (parts[0] == "+Inf") {
      s.value = INFINITY;
    } else if (parts[0] == "-Inf") {
      s.value = -INFINITY;
    } else if (parts[0] == "NaN") {
      s.value = NAN;
    } else if (!absl::SimpleAtod(parts[0], &s.value)) {
      return bad("value is not a number");
    }
    out.push_back(std::move(s));
  }
  return out;
}

namespace {
bool Matches(const Sample& s, const std::string& name, const std::map<std::string, std::string>& labels) {
  if (s.name != name) return false;
  for (const auto& [k, v] : labels) {
    auto it = s.labels.find(k);
    if (it == s.labels.end() || it->second != v) return false;
  }
  return true;
}
}  // namespace

std::optional<double> FindSample(const std::vector<Sample>& samples, const std::string& name,
                                 const std::map<std::string, std::string>& labels) {
  for (const Sample& s : samples) {
    if (Matches(s, name, labels)) return s.value;
  }
  return std::nullopt;
}

int CountSamples(const std::vector<Sample>& samples, const std::string& name,
                 const std::map<std::string, std::string>& labels) {
  int n = 0;
  for (const Sample& s : samples) n += Matches(s, name, labels);
  return n;
}

absl::StatusOr<std::vector<Sample>> Scrape(int http_port, std::string* raw) {
  absl::StatusOr<HttpResponse> r = HttpCall(http_port, "GET", "/metrics");
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return absl::InternalError(absl::StrCat("/metrics answered ", r->status, ": ", r->body));
  }
  if (raw != nullptr) *raw = r->body;
  return ParseExposition(r->body);
}

ftd::v1::JobMetrics StepSample(int step, int world_size) {
  ftd::v1::JobMetrics m;
  m.set_world_size(world_size);
  m.set_tokens(4096);
  m.set_step_seconds(0.4 + 0.01 * (step % 3));
  m.set_forward_seconds(0.1);
  m.set_backward_seconds(0.2);
  m.set_optimizer_seconds(0.05);
  m.set_all_to_all_seconds(0.02);
  m.set_tokens_per_second_per_gpu(4096 / m.step_seconds() / world_size);
  m.set_model_tflops_per_gpu(1.5);
  m.set_mfu(1.5 / 989.0);
  m.set_peak_memory_bytes(int64_t{3} << 30);
  m.set_reserved_memory_bytes(int64_t{4} << 30);
  m.set_loss(3.0 * std::exp(-0.05 * step) + 1.0);
  m.set_grad_norm(0.9);
  m.set_lr(1e-5);
  m.set_expert_load_imbalance(1.25);
  return m;
}

}  // namespace ftd::testing
