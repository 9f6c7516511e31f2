#include "client/connection.h"

#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"

namespace ftd::client {

std::string OneLine(const std::string& text) {
  std::string s = absl::StrReplaceAll(text, {{"\r\n", " "}, {"\n", " "}, {"\r", " "}});
  return std::string(absl::StripAsciiWhitespace(s));
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Create(const ClientOptions& options) {
  auto c = std::unique_ptr<Connection>(new Connection());
  c->options_ = options;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  grpc::ChannelArguments args;
  // Large job listings; the server limits requests, not responses.
  args.SetMaxReceiveMessageSize(64 << 20);
  // Notice a connection that died without closing (a vanished coordinator, a NAT that dropped
  // the flow) within ~40 s, also under a quiet `watch`; ftd accepts pings 5 s apart.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // else only 2 pings on a quiet stream
  if (!options.tls) {
    creds = grpc::InsecureChannelCredentials();
  } else if (options.insecure_skip_verify) {
    grpc::experimental::TlsChannelCredentialsOptions tls;
    tls.set_verify_server_certs(false);
    tls.set_check_call_host(false);
    tls.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
    creds = grpc::experimental::TlsCredentials(tls);
  } else {
    grpc::SslCredentialsOptions ssl;
    if (!options.ca_cert.empty()) {
      absl::StatusOr<std::string> pem = ReadFileToString(options.ca_cert);
      if (!pem.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("--ca-cert ", options.ca_cert, ": cannot read the file"));
      }
      if (!absl::StrContains(*pem, "-----BEGIN CERTIFICATE-----")) {
        return absl::InvalidArgumentError(absl::StrCat("--ca-cert ", options.ca_cert, ": not a PEM certificate"));
      }
      ssl.pem_root_certs = *pem;
    }
    creds = grpc::SslCredentials(ssl);
  }
  if (!options.server_name.empty()) args.SetSslTargetNameOverride(options.server_name);
  c->channel_ = grpc::CreateCustomChannel(options.endpoint, creds, args);
  c->stub_ = ftd::v1::JobService::NewStub(c->channel_);
  return c;
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext(bool streaming) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  if (!streaming) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(options_.timeout_seconds * 1000)));
  }
  return ctx;
}

std::string Connection::Describe(const grpc::Status& status) const {
  const std::string msg = OneLine(status.error_message());
  const std::string& ep = options_.endpoint;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE: {
      if (!absl::StrContains(msg, "failed to connect") && !absl::StrContains(msg, "Connection") &&
          !absl::StrContains(msg, "Socket closed") && !absl::StrContains(msg, "DNS") &&
          !absl::StrContains(msg, "handshake") && !absl::StrContains(msg, "Ssl") && !msg.empty()) {
        return absl::StrCat("the coordinator at ", ep, " is unavailable: ", msg);
      }
      std::string why = "no connection";
      if (absl::StrContains(msg, "Connection refused")) why = "connection refused";
      else if (absl::StrContains(msg, "DNS")) why = "the host name does not resolve";
      else if (absl::StrContains(msg, "andshake") || absl::StrContains(msg, "Ssl") ||
               absl::StrContains(msg, "SSL") || absl::StrContains(msg, "TLS"))
        why = options_.tls ? "TLS handshake failed: check --ca-cert / --server-name, or whether the "
                             "coordinator serves TLS"
                           : "the connection failed; if the coordinator serves TLS, pass --tls or --ca-cert";
      else if (absl::StrContains(msg, "Socket closed") || absl::StrContains(msg, "reset"))
        why = options_.tls ? "the connection was closed" :
              "the connection was closed; if the coordinator serves TLS, pass --tls or --ca-cert";
      return absl::StrCat("cannot reach the coordinator at ", ep, " (", why,
                          "); set --endpoint, FTD_ENDPOINT or endpoint: in the config file");
    }
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::StrCat("the coordinator at ", ep, " did not answer within ",
                          options_.timeout_seconds, " s (--timeout)");
    case grpc::StatusCode::UNAUTHENTICATED:
      if (options_.token.empty()) {
        return absl::StrCat("the coordinator at ", ep,
                            " requires a token; set --token, FTD_TOKEN or token: in the config file");
      }
      return absl::StrCat("the coordinator at ", ep, " rejected the token (", msg,
                          "); check --token, FTD_TOKEN or token: in the config file");
    case grpc::StatusCode::PERMISSION_DENIED:
      return absl::StrCat("permission denied: ", msg);
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ALREADY_EXISTS:
      return msg;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return absl::StrCat("rejected by the coordinator (too large or too many requests): ", msg);
    case grpc::StatusCode::UNIMPLEMENTED:
      return absl::StrCat("the coordinator at ", ep, " does not implement this call (", msg,
                          "); is it an older ftd?");
    default:
      return absl::StrCat("call failed (code ", static_cast<int>(status.error_code()), "): ", msg);
  }
}

}  // namespace ftd::client
