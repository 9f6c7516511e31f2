#include "tests/server/server_test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <random>
#include <stdexcept>

#include <grpcpp/generic/generic_stub.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace ftd::testing {
namespace {

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

absl::StatusOr<int> Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port));
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads to EOF (or `timeout`).
std::string ReadAll(int fd, absl::Duration timeout) {
  std::string out;
  char buf[65536];
  absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0 || ::poll(&p, 1, ms) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Splits the head off `raw`; false when no complete head.
bool ParseHead(const std::string& raw, HttpResponse* response, size_t* body_start) {
  size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return false;
  std::vector<std::string> lines = absl::StrSplit(raw.substr(0, end), "\r\n");
  std::vector<std::string> status_line = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (status_line.size() < 2 || !absl::SimpleAtoi(status_line[1], &response->status)) return false;
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    response->headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  *body_start = end + 4;
  return true;
}

}  // namespace

TestEnv::TestEnv() {
  char tmpl[] = "/tmp/ftd-server-test-XXXXXX";
  root_ = ::mkdtemp(tmpl);
  ::mkdir((root_ + "/models").c_str(), 0755);
  ::mkdir(model_dir().c_str(), 0755);
  ::mkdir(data_root().c_str(), 0755);
  ::mkdir(output_root().c_str(), 0755);
  // A small Qwen3-MoE-shaped config: the plan's memory estimate reads it.
  WriteFile(model_dir() + "/config.json", R"({
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 256, "num_hidden_layers": 4,
    "vocab_size": 1024, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
    "intermediate_size": 512, "moe_intermediate_size": 128, "num_experts": 8,
    "num_experts_per_tok": 2, "tie_word_embeddings": false})");
  // Each tenant's datasets lie in its namespace of the data root.
  for (const char* tenant : {kTenantA, kTenantB, kTenantAdmin}) {
    ::mkdir(absl::StrCat(data_root(), "/", tenant).c_str(), 0755);
    WriteFile(train_file(tenant), "{\"input_ids\": [1, 2, 3]}\n");
  }
  WriteFile(tokens_file(), absl::StrCat("# test tokens\n", kTokenA, " ", kTenantA, " user\n", kTokenB, " ",
                                        kTenantB, " user\n", kTokenAdmin, " ", kTenantAdmin, " admin  # admin\n"));
}

TestEnv::~TestEnv() {
  if (!root_.empty() && ::getenv("FTD_KEEP_TEST_DIRS") == nullptr) {
    std::system(absl::StrCat("rm -rf '", root_, "'").c_str());
  }
}

server::DaemonOptions TestEnv::Options() const {
  server::DaemonOptions o;
  o.data_dir = data_dir();
  o.grpc_listen = "127.0.0.1:0";
  o.http_listen = "127.0.0.1:0";
  o.tokens_file = tokens_file();
  o.shared_model_roots = {model_root()};
  o.data_roots = {data_root()};
  o.http_threads = 16;
  return o;
}

ftd::v1::JobSpec ValidSpec(const TestEnv& env) {
  ftd::v1::JobSpec spec;
  spec.set_base_model(env.model_dir());
  spec.mutable_datasets()->set_train("train.jsonl");  // in the submitting tenant's namespace
  spec.mutable_datasets()->set_format("jsonl_tokens");
  auto* hp = spec.mutable_hyperparameters();
  hp->set_max_steps(100);
  hp->set_global_batch(8);
  hp->set_micro_batch(1);
  hp->set_seq_len(4096);
  hp->set_lr(1e-5);
  spec.mutable_parallelism()->set_ep_size(8);
  spec.mutable_parallelism()->set_zero_stage(2);
  spec.mutable_resources()->set_nodes(1);
  spec.mutable_resources()->set_gpus_per_node(8);
  return spec;
}

std::unique_ptr<ftd::v1::JobService::Stub> MakeStub(int port) {
  return ftd::v1::JobService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
}

void Authorize(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

int HealthCheck(int port, const std::string& service) {
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  // grpc.health.v1.HealthCheckRequest{service = 1}: encoded by hand, no health stubs needed.
  std::string request = absl::StrCat(std::string(1, '\x0a'), std::string(1, char(service.size())), service);
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1), resp;
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                 [&](grpc::Status s) { done.set_value(s); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return -static_cast<int>(status.error_code());
  std::vector<grpc::Slice> slices;
  resp.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1 (enum)}; absent means UNKNOWN (0).
  return bytes.size() >= 2 && bytes[0] == '\x08' ? bytes[1] : 0;
}

absl::StatusOr<std::vector<std::string>> ReflectionServices(int port) {
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](intptr_t want) {
    return cq.Next(&tag, &ok) && ok && reinterpret_cast<intptr_t>(tag) == want;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!step(1)) return absl::UnavailableError("reflection: start failed");
  // ServerReflectionRequest{list_services = 7: ""}.
  std::string request("\x3a\x00", 2);
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1), resp;
  call->Write(req, reinterpret_cast<void*>(2));
  if (!step(2)) return absl::UnavailableError("reflection: write failed");
  call->Read(&resp, reinterpret_cast<void*>(3));
  if (!step(3)) return absl::UnavailableError("reflection: read failed");
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  std::vector<grpc::Slice> slices;
  resp.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // Service names are the printable runs of the response that contain a dot.
  std::vector<std::string> names;
  std::string run;
  for (char c : bytes) {
    if (absl::ascii_isalnum(c) || c == '.' || c == '_') {
      run.push_back(c);
    } else {
      if (run.find('.') != std::string::npos) names.push_back(run);
      run.clear();
    }
  }
  if (run.find('.') != std::string::npos) names.push_back(run);
  return names;
}

grpc::Status RawUnaryCall(grpc::ChannelInterface* channel, const std::string& method,
                          const std::string& token, const std::string& request_bytes) {
  std::shared_ptr<grpc::ChannelInterface> unowned(channel, [](grpc::ChannelInterface*) {});
  grpc::GenericStub stub(unowned);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer req(&slice, 1), resp;
  grpc::ClientContext ctx;
  Authorize(&ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &resp,
                 [&](grpc::Status s) { done.set_value(s); });
  return done.get_future().get();
}

absl::StatusOr<HttpResponse> HttpRaw(int port, const std::string& raw) {
  absl::StatusOr<int> fd = Connect(port);
  if (!fd.ok()) return fd.status();
  SendAll(*fd, raw);
  ::shutdown(*fd, SHUT_WR);
  std::string reply = ReadAll(*fd, absl::Seconds(20));
  ::close(*fd);
  HttpResponse response;
  size_t body_start = 0;
  if (!ParseHead(reply, &response, &body_start)) return response;  // status 0
  response.body = reply.substr(body_start);
  auto it = response.headers.find("content-length");
  size_t len;
  if (it != response.headers.end() && absl::SimpleAtoi(it->second, &len) && len < response.body.size()) {
    response.body.resize(len);
  }
  return response;
}

absl::StatusOr<HttpResponse> HttpCall(int port, const std::string& method, const std::string& target,
                                      const std::string& body, const std::string& token,
                                      const std::vector<std::string>& extra_headers) {
  std::string raw = absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                 "Connection: close\r\n");
  if (!token.empty()) absl::StrAppend(&raw, "Authorization: Bearer ", token, "\r\n");
  if (!body.empty() || method == "POST") {
    absl::StrAppend(&raw, "Content-Type: application/json\r\nContent-Length: ", body.size(), "\r\n");
  }
  for (const std::string& h : extra_headers) absl::StrAppend(&raw, h, "\r\n");
  absl::StrAppend(&raw, "\r\n", body);
  return HttpRaw(port, raw);
}

absl::StatusOr<std::unique_ptr<SseStream>> SseStream::Open(int port, const std::string& target,
                                                           const std::string& token,
                                                           const std::vector<std::string>& headers) {
  absl::StatusOr<int> fd = Connect(port);
  if (!fd.ok()) return fd.status();
  auto stream = std::make_unique<SseStream>();
  stream->fd_ = *fd;
  std::string raw = absl::StrCat("GET ", target, " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
  if (!token.empty()) absl::StrAppend(&raw, "Authorization: Bearer ", token, "\r\n");
  for (const std::string& h : headers) absl::StrAppend(&raw, h, "\r\n");
  raw += "\r\n";
  if (!SendAll(*fd, raw)) return absl::UnavailableError("send");
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  char buf[8192];
  while (absl::Now() < deadline) {
    HttpResponse head;
    size_t body_start;
    if (ParseHead(stream->buffer_, &head, &body_start)) {
      stream->status_ = head.status;
      stream->buffer_ = stream->buffer_.substr(body_start);
      return stream;
    }
    pollfd p{*fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    ssize_t n = ::recv(*fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    stream->buffer_.append(buf, static_cast<size_t>(n));
  }
  return absl::DeadlineExceededError("no response head");
}

SseStream::~SseStream() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<SseEvent> SseStream::Read(int n, absl::Duration timeout) {
  std::vector<SseEvent> events;
  absl::Time deadline = absl::Now() + timeout;
  char buf[8192];
  while (static_cast<int>(events.size()) < n) {
    size_t end = buffer_.find("\n\n");
    if (end != std::string::npos) {
      std::string block = buffer_.substr(0, end);
      buffer_ = buffer_.substr(end + 2);
      SseEvent event;
      bool any = false;
      for (absl::string_view line : absl::StrSplit(block, '\n')) {
        if (absl::StartsWith(line, ":")) continue;  // comment (keep-alive)
        size_t colon = line.find(':');
        if (colon == absl::string_view::npos) continue;
        std::string value(absl::StripLeadingAsciiWhitespace(line.substr(colon + 1)));
        absl::string_view key = line.substr(0, colon);
        if (key == "id") event.id = value, any = true;
        if (key == "event") event.event = value, any = true;
        if (key == "data") event.data += value, any = true;
      }
      if (any) events.push_back(std::move(event));
      continue;
    }
    if (ended_) break;
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0) break;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) break;
    ssize_t got = ::recv(fd_, buf, sizeof(buf), 0);
    if (got <= 0) {
      ended_ = true;
      continue;
    }
    buffer_.append(buf, static_cast<size_t>(got));
  }
  return events;
}

std::string JsonGet(const std::string& json, const std::string& dotted_path) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded()) return "<not json>";
  for (absl::string_view key : absl::StrSplit(dotted_path, '.')) {
    int index;
    if (j.is_array() && absl::SimpleAtoi(key, &index)) {
      if (index < 0 || index >= static_cast<int>(j.size())) return "";
      j = j[index];
    } else if (j.is_object() && j.contains(std::string(key))) {
      j = j[std::string(key)];
    } else {
      return "";
    }
  }
  return j.is_string() ? j.get<std::string>() : j.dump();
}

absl::StatusOr<SpawnedDaemon> SpawnDaemon(const std::vector<std::string>& args) {
  int out_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return absl::InternalError("pipe");
  const std::string binary = std::string(FTD_BIN_DIR) + "/ftd";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(binary.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  SpawnedDaemon d;
  d.pid = pid;
  std::string out;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  char buf[512];
  while (absl::Now() < deadline) {
    pollfd p{out_pipe[0], POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    ssize_t n = ::read(out_pipe[0], buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    size_t pos = out.find("ftd ready ");
    if (pos != std::string::npos && out.find('\n', pos) != std::string::npos) {
      std::sscanf(out.c_str() + pos, "ftd ready grpc_port=%d http_port=%d", &d.grpc_port, &d.http_port);
      ::close(out_pipe[0]);
      return d;
    }
  }
  ::close(out_pipe[0]);
  KillHard(d);
  return absl::UnavailableError(absl::StrCat("ftd did not become ready; stdout: ", out));
}

void KillHard(const SpawnedDaemon& d) {
  if (d.pid <= 0) return;
  ::kill(d.pid, SIGKILL);
  int status;
  ::waitpid(d.pid, &status, 0);
}

int UnusedLoopbackPort() {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> pick(20000, 31999);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int port = pick(rng);
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    if (bound) return port;
  }
  throw std::runtime_error("no unused loopback port in [20000, 32000)");
}

}  // namespace ftd::testing
