// A gRPC channel to the coordinator's JobService with the caller's bearer token, TLS as
// configured, and one-line descriptions of failed calls (unreachable, bad token, ...).
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "client/client_options.h"
#include "ftd/v1/jobs.grpc.pb.h"

namespace ftd::client {

class Connection {
 public:
  // Builds the channel (no I/O yet); errors for unreadable certificate files.
  static absl::StatusOr<std::unique_ptr<Connection>> Create(const ClientOptions& options);

  ftd::v1::JobService::Stub* stub() { return stub_.get(); }
  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

  // A context carrying the token; unary calls get the configured deadline, streams none.
  std::unique_ptr<grpc::ClientContext> NewContext(bool streaming = false) const;

  // One line: what failed and what to do, e.g. "cannot reach the coordinator at
  // 127.0.0.1:7070 (connection refused); set --endpoint or FTD_ENDPOINT".
  std::string Describe(const grpc::Status& status) const;

 private:
  Connection() = default;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ftd::v1::JobService::Stub> stub_;
};

// Single-line, trimmed text (gRPC messages may span lines).
std::string OneLine(const std::string& text);

}  // namespace ftd::client
