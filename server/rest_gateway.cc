#include "server/rest_gateway.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "ftd/v1/jobs.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "server/http_status.h"
#include "spdlog/spdlog.h"

namespace ftd::server {
namespace {

using google::protobuf::Message;

// The length of the well-formed UTF-8 sequence at the start of `s` (1-4), or 0 when it is not
// one (a stray continuation byte, an overlong form, a surrogate, past U+10FFFF, cut short).
size_t Utf8SequenceLength(absl::string_view s) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = byte(0);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() < n || byte(1) < lo || byte(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  }
  return n;
}

// A JSON string body; bytes that are not UTF-8 (error messages may quote a malformed request)
// become U+FFFD, so that the response is always valid JSON.
std::string JsonEscape(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = Utf8SequenceLength(s.substr(i));
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (c < 0x20) {
          out += absl::StrCat("\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  return out;
}

absl::StatusOr<std::string> ToJson(const Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = false;
  auto st = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!st.ok()) return absl::InternalError(absl::StrCat("JSON encoding: ", st.ToString()));
  return json;
}

bool WriteAll(mg_connection* conn, absl::string_view data) {
  return mg_write(conn, data.data(), data.size()) == static_cast<int>(data.size());
}

template <typename Request, typename Response>
std::function<absl::StatusOr<std::unique_ptr<Message>>(const Principal&, const Message&)> Bind(
    JobApi* api, absl::StatusOr<Response> (JobApi::*fn)(const Principal&, const Request&)) {
  return [api, fn](const Principal& who,
                   const Message& request) -> absl::StatusOr<std::unique_ptr<Message>> {
    FTD_ASSIGN_OR_RETURN(Response response,
                         (api->*fn)(who, static_cast<const Request&>(request)));
    return std::make_unique<Response>(std::move(response));
  };
}

}  // namespace

int RestGateway::SendJson(mg_connection* conn, int http_status, const std::string& json,
                          const std::string& extra_headers) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\n%s\r\n",
            http_status, HttpReasonPhrase(http_status), json.size(), extra_headers.c_str());
  WriteAll(conn, json);
  return http_status;
}

int RestGateway::SendError(mg_connection* conn, const absl::Status& status) {
  int http = HttpStatusFromCode(status.code());
  std::string headers;
  if (status.code() == absl::StatusCode::kUnauthenticated) {
    headers = "WWW-Authenticate: Bearer realm=\"ftd\"\r\n";
  }
  if (status.code() == absl::StatusCode::kUnimplemented &&
      absl::StrContains(status.message(), "is not allowed")) {
    http = 405;
  }
  if (status.code() == absl::StatusCode::kResourceExhausted &&
      absl::StrContains(status.message(), "request body")) {
    http = 413;
  }
  const std::string body =
      absl::StrCat("{\"code\":", static_cast<int>(status.code()), ",\"status\":\"",
                   absl::StatusCodeToString(status.code()), "\",\"message\":\"",
                   JsonEscape(status.message()), "\"}");
  return SendJson(conn, http, body, headers);
}

absl::StatusOr<std::unique_ptr<RestGateway>> RestGateway::Start(const RestGatewayOptions& options,
                                                                JobApi* api) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("ftd.v1.JobService");
  if (service == nullptr) return absl::InternalError("ftd.v1.JobService is not linked in");
  FTD_ASSIGN_OR_RETURN(HttpRuleRouter router, HttpRuleRouter::Create(service));
  std::unique_ptr<RestGateway> gateway(new RestGateway(api, std::move(router), options));
  FTD_RETURN_IF_ERROR(gateway->BindHandlers());

  const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (tls && (options.tls_cert_file.empty() || options.tls_key_file.empty())) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  }
  // With TLS, civetweb serves plaintext on loopback only, behind the TlsTerminator (see
  // tls_terminator.h for why civetweb's own TLS is not used).
  const std::string ports = tls ? "127.0.0.1:0" : options.listen;
  const std::string threads = absl::StrCat(options.num_threads);
  const char* civet_options[] = {"listening_ports", ports.c_str(), "num_threads", threads.c_str(),
                                 "request_timeout_ms", "60000", "enable_keep_alive", "yes",
                                 "tcp_nodelay", "1", nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  callbacks.log_message = [](const mg_connection*, const char* message) {
    spdlog::warn("http: {}", message);
    return 1;
  };
  mg_init_library(0);
  gateway->ctx_ = mg_start(&callbacks, gateway.get(), civet_options);
  if (gateway->ctx_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve HTTP on ", ports, " (address in use or not an IPv4 HOST:PORT)"));
  }
  mg_server_port server_ports[4];
  int n = mg_get_server_ports(gateway->ctx_, 4, server_ports);
  if (n > 0) gateway->port_ = server_ports[0].port;
  gateway->civet_port_ = gateway->port_;
  if (tls) {
    FTD_ASSIGN_OR_RETURN(gateway->tls_terminator_,
                         TlsTerminator::Start(options.listen, options.tls_cert_file,
                                              options.tls_key_file, gateway->port_,
                                              /*max_connections=*/4 * options.num_threads));
    gateway->port_ = gateway->tls_terminator_->port();
    gateway->tls_ = true;
  }

  gateway->AddHandler("/v1", [gw = gateway.get()](mg_connection* conn) { return gw->HandleApi(conn); });
  gateway->AddHandler("/healthz", [](mg_connection* conn) {
    return SendJson(conn, 200, "{\"status\":\"SERVING\"}");
  });
  gateway->AddHandler("/readyz", [api](mg_connection* conn) {
    return api->ready() ? SendJson(conn, 200, "{\"status\":\"SERVING\"}")
                        : SendJson(conn, 503, "{\"status\":\"NOT_SERVING\"}");
  });
  return gateway;
}

RestGateway::~RestGateway() { Stop(); }

void RestGateway::Stop() {
  if (stopping_.exchange(true)) return;
  {
    absl::MutexLock lock(&mu_);
    for (JobWatch* watch : open_watches_) watch->Interrupt();
  }
  if (tls_terminator_ != nullptr) tls_terminator_->Stop();
  if (ctx_ == nullptr) return;
  // civetweb's listener notices the stop only when its poll() returns, which takes up to two
  // seconds when idle; a connection to the listener wakes it at once.
  std::atomic<bool> stopped{false};
  std::thread waker([this, &stopped] {
    while (!stopped.load()) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(civet_port_));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
      ::close(fd);
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  mg_stop(ctx_);  // waits for handler threads
  stopped = true;
  waker.join();
  ctx_ = nullptr;
}

void RestGateway::AddHandler(const std::string& uri, Handler handler) {
  if (options_.request_observer) {
    handler = [this, uri, inner = std::move(handler)](mg_connection* conn) {
      const absl::Time start = absl::Now();
      const int status = inner(conn);
      std::string route = uri;
      if (uri == "/v1") {
        const mg_request_info* info = mg_get_request_info(conn);
        absl::StatusOr<RouteMatch> match =
            router_.Match(info->request_method != nullptr ? info->request_method : "",
                          info->local_uri != nullptr ? info->local_uri : "");
        route = match.ok() ? match->route->method->name() : "unmatched";
      }
      options_.request_observer(route, status, absl::Now() - start);
      return status;
    };
  }
  absl::MutexLock lock(&mu_);
  handlers_.push_back(std::make_unique<Handler>(std::move(handler)));
  mg_set_request_handler(ctx_, uri.c_str(), &RestGateway::Trampoline, handlers_.back().get());
}

void RestGateway::AddApiPrefilter(Handler handler) {
  absl::MutexLock lock(&mu_);
  api_prefilters_.push_back(std::make_shared<Handler>(std::move(handler)));
}

int RestGateway::Trampoline(mg_connection* conn, void* handler) {
  return (*static_cast<Handler*>(handler))(conn);
}

absl::Status RestGateway::BindHandlers() {
  unary_handlers_["CreateJob"] = Bind(api_, &JobApi::CreateJob);
  unary_handlers_["GetJob"] = Bind(api_, &JobApi::GetJob);
  unary_handlers_["ListJobs"] = Bind(api_, &JobApi::ListJobs);
  unary_handlers_["CancelJob"] = Bind(api_, &JobApi::CancelJob);
  unary_handlers_["ListJobEvents"] = Bind(api_, &JobApi::ListJobEvents);
  unary_handlers_["ListCheckpoints"] = Bind(api_, &JobApi::ListCheckpoints);
  // Every annotated method must be served: a new RPC in the proto cannot silently 404.
  for (const HttpRoute& route : router_.routes()) {
    if (route.method->server_streaming()) {
      if (route.method->name() != "WatchJob") {
        return absl::InternalError(absl::StrCat("no REST streaming handler for ",
                                                route.method->full_name()));
      }
      continue;
    }
    if (!unary_handlers_.count(route.method->name())) {
      return absl::InternalError(absl::StrCat("no REST handler for ", route.method->full_name()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RestGateway::ReadBody(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  if (info->content_length > options_.max_request_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request body of ", info->content_length, " bytes exceeds the limit of ",
        options_.max_request_bytes));
  }
  std::string body;
  char buf[16384];
  for (;;) {
    int n = mg_read(conn, buf, sizeof(buf));
    if (n <= 0) break;
    body.append(buf, static_cast<size_t>(n));
    if (static_cast<int64_t>(body.size()) > options_.max_request_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "request body exceeds the limit of ", options_.max_request_bytes, " bytes"));
    }
  }
  return body;
}

int RestGateway::HandleApi(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string verb = info->request_method != nullptr ? info->request_method : "";
  const std::string path = info->local_uri != nullptr ? info->local_uri : "";
  std::vector<std::shared_ptr<Handler>> prefilters;
  {
    absl::MutexLock lock(&mu_);
    prefilters = api_prefilters_;
  }
  for (const auto& prefilter : prefilters) {
    if (int sent = (*prefilter)(conn); sent != 0) return sent;
  }

  absl::StatusOr<RouteMatch> match = router_.Match(verb, path);
  if (!match.ok()) return SendError(conn, match.status());
  const HttpRoute& route = *match->route;

  const char* authorization = mg_get_header(conn, "Authorization");
  absl::StatusOr<Principal> who = api_->Authenticate(authorization != nullptr ? authorization : "");
  if (!who.ok()) return SendError(conn, who.status());

  std::unique_ptr<Message> request(
      google::protobuf::MessageFactory::generated_factory()
          ->GetPrototype(route.method->input_type())
          ->New());
  absl::Status parsed = [&]() -> absl::Status {
    if (route.body == "*") {
      FTD_ASSIGN_OR_RETURN(std::string body, ReadBody(conn));
      if (!body.empty()) {
        google::protobuf::util::JsonParseOptions options;
        options.ignore_unknown_fields = false;
        auto st = google::protobuf::util::JsonStringToMessage(body, request.get(), options);
        if (!st.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("body: ", st.message().ToString()));
        }
      }
      if (info->query_string != nullptr && info->query_string[0] != '\0') {
        return absl::InvalidArgumentError(
            absl::StrCat(route.method->name(), " takes its fields in the body, not the query"));
      }
    } else if (info->query_string != nullptr) {
      FTD_ASSIGN_OR_RETURN(auto params, ParseQueryString(info->query_string));
      for (const auto& [key, value] : params) {
        FTD_RETURN_IF_ERROR(SetFieldFromString(request.get(), key, value));
      }
    }
    // Path variables last: they name the resource and win over the body.
    for (const auto& [field, value] : match->variables) {
      google::protobuf::Message* m = request.get();
      const auto* fd = m->GetDescriptor()->FindFieldByName(field);
      if (fd != nullptr && !fd->is_repeated() &&
          fd->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_STRING) {
        m->GetReflection()->ClearField(m, fd);
      }
      FTD_RETURN_IF_ERROR(SetFieldFromString(m, field, value));
    }
    return absl::OkStatus();
  }();
  if (!parsed.ok()) return SendError(conn, parsed);

  if (route.method->server_streaming()) {
    auto& watch_request = static_cast<ftd::v1::WatchJobRequest&>(*request);
    const char* last_event_id = mg_get_header(conn, "Last-Event-ID");
    int64_t resume = 0;
    if (watch_request.after_seq() == 0 && last_event_id != nullptr &&
        absl::SimpleAtoi(last_event_id, &resume)) {
      watch_request.set_after_seq(resume);
    }
    return ServeWatch(conn, *who, watch_request);
  }
  absl::StatusOr<std::unique_ptr<Message>> response =
      unary_handlers_.at(route.method->name())(*who, *request);
  if (!response.ok()) return SendError(conn, response.status());
  absl::StatusOr<std::string> json = ToJson(**response);
  if (!json.ok()) return SendError(conn, json.status());
  return SendJson(conn, 200, *json);
}

int RestGateway::ServeWatch(mg_connection* conn, const Principal& who,
                            const ftd::v1::WatchJobRequest& request) {
  absl::StatusOr<std::unique_ptr<JobWatch>> opened = api_->WatchJob(who, request, nullptr);
  if (!opened.ok()) return SendError(conn, opened.status());
  std::unique_ptr<JobWatch> watch = *std::move(opened);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return SendError(conn, absl::UnavailableError("shutting down"));
    open_watches_.insert(watch.get());
  }
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "Connection: close\r\nX-Accel-Buffering: no\r\n\r\n");
  absl::Time last_write = absl::Now();
  for (;;) {
    absl::StatusOr<std::optional<ftd::v1::JobEvent>> next = watch->Next();
    if (!next.ok()) {
      WriteAll(conn, absl::StrCat("event: error\ndata: ", JsonEscape(next.status().ToString()), "\n\n"));
      break;
    }
    if (next->has_value()) {
      const ftd::v1::JobEvent& event = **next;
      absl::StatusOr<std::string> json = ToJson(event);
      if (!json.ok()) break;
      const char* kind = event.kind_case() == ftd::v1::JobEvent::kStatus       ? "status"
                         : event.kind_case() == ftd::v1::JobEvent::kMetrics    ? "metrics"
                         : event.kind_case() == ftd::v1::JobEvent::kCheckpoint ? "checkpoint"
                         : event.kind_case() == ftd::v1::JobEvent::kEval       ? "eval"
                                                                               : "message";
      if (!WriteAll(conn, absl::StrCat("id: ", event.seq(), "\nevent: ", kind, "\ndata: ", *json,
                                       "\n\n"))) {
        break;
      }
      last_write = absl::Now();
      if (watch->finished()) break;
      continue;
    }
    if (watch->interrupted()) break;
    watch->Wait(absl::Seconds(1));
    if (absl::Now() - last_write >= options_.sse_keepalive) {
      // A comment line: keeps proxies from timing out and detects a closed client.
      if (!WriteAll(conn, ": keepalive\n\n")) break;
      last_write = absl::Now();
    }
  }
  {
    absl::MutexLock lock(&mu_);
    open_watches_.erase(watch.get());
  }
  return 200;
}

}  // namespace ftd::server
