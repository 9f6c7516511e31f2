#include "server/tls_terminator.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ftd::server {
namespace {

std::string OpenSslError() {
  char buf[256];
  unsigned long err = ERR_get_error();
  if (err == 0) return "unknown OpenSSL error";
  ERR_error_string_n(err, buf, sizeof(buf));
  return buf;
}

bool WriteFully(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

void TlsTerminator::SslCtxDeleter::operator()(void* ctx) const {
  SSL_CTX_free(static_cast<SSL_CTX*>(ctx));
}

absl::StatusOr<std::unique_ptr<TlsTerminator>> TlsTerminator::Start(const std::string& listen,
                                                                    const std::string& cert_file,
                                                                    const std::string& key_file,
                                                                    int backend_port,
                                                                    int max_connections) {
  std::unique_ptr<TlsTerminator> t(new TlsTerminator());
  t->backend_port_ = backend_port;
  t->max_connections_ = max_connections;
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", OpenSslError()));
  t->ssl_ctx_.reset(ctx);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-cert ", cert_file, ": ", OpenSslError()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-key ", key_file, ": ", OpenSslError()));
  }

  const size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("--http-listen ", listen, ": expected HOST:PORT"));
  }
  const std::string host = listen.substr(0, colon);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (host.empty() || host == "0.0.0.0" || host == "*") {
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
  } else if (host == "localhost") {
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--http-listen ", listen, ": not an IPv4 address"));
  }
  t->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(t->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(t->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(t->listen_fd_, 128) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on --http-listen ", listen, ": ",
                                               std::strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(t->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  t->port_ = ntohs(addr.sin_port);
  t->acceptor_ = std::thread([raw = t.get()] { raw->AcceptLoop(); });
  return t;
}

TlsTerminator::~TlsTerminator() { Stop(); }

void TlsTerminator::Stop() {
  std::vector<std::thread> relays;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (int fd : client_fds_) ::shutdown(fd, SHUT_RDWR);  // wakes their polls
    for (auto& [id, t] : relays_) relays.push_back(std::move(t));
    relays_.clear();
  }
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, t] : relays_) relays.push_back(std::move(t));  // accepted just before the stop
    relays_.clear();
  }
  for (std::thread& t : relays) t.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

void TlsTerminator::ReapFinished() {
  std::vector<std::thread> done;
  {
    absl::MutexLock lock(&mu_);
    for (uint64_t id : finished_) {
      auto it = relays_.find(id);
      if (it == relays_.end()) continue;
      done.push_back(std::move(it->second));
      relays_.erase(it);
    }
    finished_.clear();
  }
  for (std::thread& t : done) t.join();  // each is returning from Relay
}

void TlsTerminator::AcceptLoop() {
  for (;;) {
    ReapFinished();
    pollfd p{listen_fd_, POLLIN, 0};
    int ready = ::poll(&p, 1, 200);
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    if (ready <= 0) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    absl::MutexLock lock(&mu_);
    if (stopping_ || static_cast<int>(client_fds_.size()) >= max_connections_) {
      ::close(fd);
      continue;
    }
    client_fds_.insert(fd);
    const uint64_t id = next_id_++;
    relays_.emplace(id, std::thread([this, fd, id] { Relay(fd, id); }));
  }
}

void TlsTerminator::Relay(int client_fd, uint64_t id) {
  timeval handshake_timeout{10, 0};
  ::setsockopt(client_fd, SOL_SOCKET, SO_RCVTIMEO, &handshake_timeout, sizeof(handshake_timeout));
  SSL* ssl = SSL_new(static_cast<SSL_CTX*>(ssl_ctx_.get()));
  int backend = -1;
  if (ssl != nullptr && SSL_set_fd(ssl, client_fd) == 1 && SSL_accept(ssl) == 1) {
    timeval none{0, 0};
    ::setsockopt(client_fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    backend = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(backend_port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    ::setsockopt(backend, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (::connect(backend, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      char buf[16384];
      bool open = true;
      while (open) {
        if (SSL_pending(ssl) == 0) {
          pollfd fds[2] = {{client_fd, POLLIN, 0}, {backend, POLLIN, 0}};
          if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
          if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = ::recv(backend, buf, sizeof(buf), 0);
            if (n <= 0 || SSL_write(ssl, buf, static_cast<int>(n)) <= 0) break;
          }
          if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        }
        int n = SSL_read(ssl, buf, sizeof(buf));
        open = n > 0 && WriteFully(backend, buf, static_cast<size_t>(n));
      }
      SSL_shutdown(ssl);
    }
  }
  if (ssl != nullptr) SSL_free(ssl);
  if (backend >= 0) ::close(backend);
  absl::MutexLock lock(&mu_);
  client_fds_.erase(client_fd);
  ::close(client_fd);
  finished_.push_back(id);
}

}  // namespace ftd::server
