#include "server/webhook_notifier.h"

#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "server/job_state_machine.h"
#include "spdlog/spdlog.h"

namespace ftd::server {
namespace {

struct ParsedUrl {
  bool tls = false;
  std::string host;
  int port = 0;
  std::string target;  // path and query, at least "/"
};

absl::StatusOr<ParsedUrl> ParseUrl(absl::string_view url) {
  ParsedUrl u;
  if (absl::ConsumePrefix(&url, "https://")) {
    u.tls = true;
    u.port = 443;
  } else if (absl::ConsumePrefix(&url, "http://")) {
    u.port = 80;
  } else {
    return absl::InvalidArgumentError("not an http:// or https:// URL");
  }
  const size_t end = url.find_first_of("/?#");
  absl::string_view authority = url.substr(0, end);
  absl::string_view rest = end == absl::string_view::npos ? "" : url.substr(end);
  rest = rest.substr(0, rest.find('#'));
  u.target = rest.empty() || rest[0] != '/' ? absl::StrCat("/", rest) : std::string(rest);
  if (size_t colon = authority.rfind(':'); colon != absl::string_view::npos) {
    if (!absl::SimpleAtoi(authority.substr(colon + 1), &u.port)) return absl::InvalidArgumentError("bad port");
    authority = authority.substr(0, colon);
  }
  u.host = std::string(authority);
  if (u.host.empty()) return absl::InvalidArgumentError("no host");
  return u;
}

std::string OpenSslError() {
  unsigned long err = ERR_get_error();
  if (err == 0) return "TLS error";
  char buf[256];
  ERR_error_string_n(err, buf, sizeof(buf));
  return buf;
}

// A connected socket to host:port, within `deadline`.
absl::StatusOr<int> Connect(const std::string& host, int port, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = absl::StrCat(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::string last = "no address";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      const int ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
      if (::poll(&p, 1, ms) == 1) {
        int err = 0;
        socklen_t len = sizeof(err);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        rc = err == 0 ? 0 : -1;
        errno = err;
      } else {
        errno = ETIMEDOUT;
      }
    }
    if (rc == 0) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      ::freeaddrinfo(res);
      return fd;
    }
    last = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return absl::UnavailableError(absl::StrCat("cannot connect to ", host, ":", port, ": ", last));
}

// Plain or TLS I/O on one connected socket; closes it when destroyed.
class Channel {
 public:
  Channel(int fd, SSL_CTX* ctx, SSL* ssl) : fd_(fd), ctx_(ctx), ssl_(ssl) {}
  ~Channel() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    ::close(fd_);
  }
  bool Write(absl::string_view data) {
    while (!data.empty()) {
      int n = ssl_ != nullptr ? SSL_write(ssl_, data.data(), static_cast<int>(data.size()))
                              : static_cast<int>(::send(fd_, data.data(), data.size(), MSG_NOSIGNAL));
      if (n < 0 && ssl_ == nullptr && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  int Read(char* buf, int n) {
    if (ssl_ != nullptr) return SSL_read(ssl_, buf, n);
    for (;;) {
      ssize_t r = ::recv(fd_, buf, static_cast<size_t>(n), 0);
      if (r < 0 && errno == EINTR) continue;
      return static_cast<int>(r);
    }
  }

 private:
  int fd_;
  SSL_CTX* ctx_;
  SSL* ssl_;
};

absl::StatusOr<std::unique_ptr<Channel>> Open(const ParsedUrl& u, absl::Time deadline, const std::string& ca_file) {
  FTD_ASSIGN_OR_RETURN(int fd, Connect(u.host, u.port, deadline));
  // Reads and writes give up at the deadline.
  timeval tv{};
  const int64_t us = std::max<int64_t>(1000, absl::ToInt64Microseconds(deadline - absl::Now()));
  tv.tv_sec = us / 1000000;
  tv.tv_usec = us % 1000000;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (!u.tls) return std::make_unique<Channel>(fd, nullptr, nullptr);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    ::close(fd);
    return absl::InternalError(OpenSslError());
  }
  auto channel_or_error = [&](SSL* ssl, const std::string& what) -> absl::StatusOr<std::unique_ptr<Channel>> {
    auto c = std::make_unique<Channel>(fd, ctx, ssl);
    if (what.empty()) return c;
    return absl::UnavailableError(absl::StrCat("TLS with ", u.host, ":", u.port, ": ", what));
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  const bool trust = ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                                     : SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) == 1;
  if (!trust) return channel_or_error(nullptr, absl::StrCat("loading trusted CAs: ", OpenSslError()));
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return channel_or_error(nullptr, OpenSslError());
  SSL_set_tlsext_host_name(ssl, u.host.c_str());
  SSL_set1_host(ssl, u.host.c_str());  // the certificate must name the host
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) != 1) {
    const long verify = SSL_get_verify_result(ssl);
    return channel_or_error(ssl, verify != X509_V_OK ? X509_verify_cert_error_string(verify) : OpenSslError());
  }
  return channel_or_error(ssl, "");
}

bool Retryable(int status) { return status == 408 || status == 429 || status >= 500; }

std::string EventName(ftd::v1::JobState state) {
  switch (state) {
    case ftd::v1::SUCCEEDED: return "job.succeeded";
    case ftd::v1::FAILED: return "job.failed";
    case ftd::v1::CANCELLED: return "job.cancelled";
    default: return "job.updated";
  }
}

}  // namespace

std::string HmacSha256Hex(absl::string_view key, absl::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), mac, &len);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(mac), len));
}

absl::StatusOr<int> HttpPost(const std::string& url, const std::vector<std::pair<std::string, std::string>>& headers,
                             const std::string& body, absl::Duration timeout, const std::string& ca_file) {
  FTD_ASSIGN_OR_RETURN(ParsedUrl u, ParseUrl(url));
  const absl::Time deadline = absl::Now() + timeout;
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<Channel> channel, Open(u, deadline, ca_file));
  const bool default_port = u.port == (u.tls ? 443 : 80);
  std::string request = absl::StrCat("POST ", u.target, " HTTP/1.1\r\nHost: ", u.host,
                                     default_port ? "" : absl::StrCat(":", u.port),
                                     "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
                                     "\r\nConnection: close\r\nUser-Agent: ftd/", ftd::kVersion, "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&request, name, ": ", value, "\r\n");
  absl::StrAppend(&request, "\r\n", body);
  if (!channel->Write(request)) {
    return absl::UnavailableError(absl::StrCat("sending to ", u.host, ":", u.port, " failed"));
  }
  // Only the status line matters: "HTTP/1.1 200 OK".
  std::string head;
  char buf[1024];
  while (head.find("\r\n") == std::string::npos && head.size() < 8192) {
    errno = 0;
    const int n = channel->Read(buf, sizeof(buf));
    if (n <= 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || absl::Now() >= deadline) {  // SO_RCVTIMEO ran out
        return absl::DeadlineExceededError(absl::StrCat("no answer from ", u.host, ":", u.port, " within ",
                                                        absl::FormatDuration(timeout)));
      }
      return absl::UnavailableError(absl::StrCat(u.host, ":", u.port, " closed the connection without an answer"));
    }
    head.append(buf, static_cast<size_t>(n));
  }
  const std::string status_line = head.substr(0, head.find("\r\n"));
  std::vector<absl::string_view> parts = absl::StrSplit(status_line, ' ');
  int status = 0;
  if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/1.") || !absl::SimpleAtoi(parts[1], &status)) {
    return absl::UnavailableError(absl::StrCat(u.host, ":", u.port, " answered something other than HTTP/1.x"));
  }
  return status;
}

absl::StatusOr<std::unique_ptr<WebhookNotifier>> WebhookNotifier::Create(WebhookOptions options, JobManager* manager,
                                                                         const SpecValidator* validator) {
  if (options.max_attempts < 1) return absl::InvalidArgumentError("--webhook-max-attempts must be at least 1");
  std::unique_ptr<WebhookNotifier> n(new WebhookNotifier(options, manager, validator));
  if (!options.secrets_file.empty()) {
    FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(options.secrets_file));
    int line_no = 0;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      ++line_no;
      line = line.substr(0, line.find('#'));
      std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
      if (f.empty()) continue;
      if (f.size() != 2 || f[1].size() < 16) {
        return absl::InvalidArgumentError(absl::StrCat("--webhook-secrets ", options.secrets_file, ":", line_no,
                                                       ": expected `TENANT SECRET` (a secret of 16+ characters)"));
      }
      n->secrets_[std::string(f[0])] = std::string(f[1]);
    }
  }
  WebhookNotifier* self = n.get();
  n->subscription_ = manager->hub()->Subscribe("", [self](const ftd::v1::JobEvent& e) { self->OnEvent(e); });
  return n;
}

WebhookNotifier::~WebhookNotifier() {
  subscription_.reset();
  Stop();
}

void WebhookNotifier::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

void WebhookNotifier::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status WebhookNotifier::CheckTenant(const std::string& tenant) const {
  if (secrets_.contains(tenant)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "tenant ", tenant, " has no webhook signing secret (the operator's --webhook-secrets file)"));
}

int WebhookNotifier::Pending() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size()) + in_flight_;
}

void WebhookNotifier::OnEvent(const ftd::v1::JobEvent& event) {
  // Under the hub's lock: queue the job id; the delivery thread reads the job.
  if (event.kind_case() != ftd::v1::JobEvent::kStatus || !IsTerminalState(event.status().state())) return;
  Delivery d;
  d.job_id = event.job_id();
  d.event = EventName(event.status().state());
  d.delivery_id = absl::StrCat(event.job_id(), "-", event.seq());
  d.due = absl::Now();
  absl::MutexLock lock(&mu_);
  if (!stop_) queue_.push(std::move(d));
}

void WebhookNotifier::Note(const std::string& job_id, const std::string& message) {
  manager_->AppendMessage(job_id, message).IgnoreError();
}

void WebhookNotifier::Loop() {
  for (;;) {
    Delivery d;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || (!queue_.empty() && queue_.top().due <= absl::Now());
      };
      while (!ready()) {
        const absl::Duration wait = queue_.empty() ? absl::Seconds(1) : queue_.top().due - absl::Now();
        mu_.AwaitWithTimeout(absl::Condition(&ready), std::max(wait, absl::Milliseconds(1)));
      }
      if (stop_) return;
      d = queue_.top();
      queue_.pop();
      ++in_flight_;
    }
    Attempt(std::move(d));
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
}

void WebhookNotifier::Attempt(Delivery d) {
  if (d.attempt == 0) {  // the first attempt fixes the body and the destination
    absl::StatusOr<ftd::v1::FineTuneJob> job = manager_->store()->GetJob(d.job_id);
    if (!job.ok() || job->spec().webhook_url().empty()) return;
    d.url = job->spec().webhook_url();
    d.tenant = job->tenant();
    google::protobuf::util::JsonPrintOptions jo;
    if (!google::protobuf::util::MessageToJsonString(*job, &d.body, jo).ok()) return;
  }
  ++d.attempt;
  auto secret = secrets_.find(d.tenant);
  if (secret == secrets_.end()) {
    Note(d.job_id, absl::StrCat("webhook: not sent to ", d.url, ": tenant ", d.tenant, " has no signing secret"));
    return;
  }
  if (absl::Status allowed = validator_->CheckWebhookDestination(d.url); !allowed.ok()) {
    Note(d.job_id, absl::StrCat("webhook: not sent: ", allowed.message()));
    return;
  }
  const std::vector<std::pair<std::string, std::string>> headers = {
      {"X-Ftd-Event", d.event},
      {"X-Ftd-Job", d.job_id},
      {"X-Ftd-Delivery", d.delivery_id},
      {"X-Ftd-Signature-256", absl::StrCat("sha256=", HmacSha256Hex(secret->second, d.body))}};
  absl::StatusOr<int> status = HttpPost(d.url, headers, d.body, options_.timeout, options_.ca_file);
  const std::string what = absl::StrCat(d.event, " to ", d.url, " (attempt ", d.attempt, " of ",
                                        options_.max_attempts, ")");
  if (status.ok() && *status >= 200 && *status < 300) {
    Note(d.job_id, absl::StrCat("webhook: delivered ", what, ": HTTP ", *status));
    return;
  }
  const std::string why = status.ok() ? absl::StrCat("HTTP ", *status) : std::string(status.status().message());
  if ((status.ok() && !Retryable(*status)) || d.attempt >= options_.max_attempts) {
    Note(d.job_id, absl::StrCat("webhook: not delivered: ", what, ": ", why, "; giving up"));
    return;
  }
  const absl::Duration backoff =
      std::min(options_.max_backoff, options_.initial_backoff * static_cast<double>(int64_t{1} << std::min(d.attempt - 1, 20)));
  Note(d.job_id, absl::StrCat("webhook: ", what, " failed: ", why, "; retrying in ", absl::FormatDuration(backoff)));
  d.due = absl::Now() + backoff;
  absl::MutexLock lock(&mu_);
  if (!stop_) queue_.push(std::move(d));
}

}  // namespace ftd::server
