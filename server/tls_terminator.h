// TlsTerminator: HTTPS for the REST gateway. Debian's civetweb 1.15 has TLS support, but it
// dlopen()s libssl with the OpenSSL 1.1 symbol table and crashes against OpenSSL 3 (it looks
// up SSL_get_peer_certificate, which OpenSSL 3 renamed), so TLS is terminated here with
// OpenSSL directly and the plaintext is relayed to civetweb listening on loopback only.
// One thread per connection (bounded): fine for an API and its SSE watchers.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace ftd::server {

class TlsTerminator {
 public:
  // Listens on `listen` (HOST:PORT, port 0: any) and relays to 127.0.0.1:`backend_port`.
  static absl::StatusOr<std::unique_ptr<TlsTerminator>> Start(const std::string& listen,
                                                              const std::string& cert_file,
                                                              const std::string& key_file,
                                                              int backend_port,
                                                              int max_connections);
  ~TlsTerminator();  // Stop()s
  TlsTerminator(const TlsTerminator&) = delete;
  TlsTerminator& operator=(const TlsTerminator&) = delete;

  // Closes the listener and every relayed connection, and joins their threads.
  void Stop();
  int port() const { return port_; }

 private:
  TlsTerminator() = default;
  void AcceptLoop();
  void Relay(int client_fd, uint64_t id);
  // Joins relay threads that have finished (the acceptor does it between accepts).
  void ReapFinished();

  struct SslCtxDeleter {
    void operator()(void* ctx) const;
  };
  std::unique_ptr<void, SslCtxDeleter> ssl_ctx_;  // SSL_CTX*, kept opaque to keep OpenSSL out of the header
  int listen_fd_ = -1;
  int port_ = 0;
  int backend_port_ = 0;
  int max_connections_ = 0;
  std::thread acceptor_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<int> client_fds_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::thread> relays_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> finished_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ftd::server
