// TLS: with --tls-cert/--tls-key, gRPC uses SslServerCredentials and REST is HTTPS only.
// Certificates are made with the openssl CLI; the HTTPS client is OpenSSL, verifying the chain.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

// One HTTPS request with certificate verification against `ca_file`; the raw response, or
// "" when the handshake or verification fails.
std::string HttpsGet(int port, const std::string& ca_file, const std::string& target,
                     const std::string& token) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  SSL* ssl = SSL_new(ctx.get());
  SSL_set_fd(ssl, fd);
  SSL_set1_host(ssl, "localhost");
  std::string out;
  if (SSL_connect(ssl) == 1) {
    std::string req = absl::StrCat("GET ", target, " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n",
                                   token.empty() ? "" : absl::StrCat("Authorization: Bearer ", token, "\r\n"),
                                   "\r\n");
    SSL_write(ssl, req.data(), static_cast<int>(req.size()));
    char buf[4096];
    int n;
    while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  }
  SSL_free(ssl);
  ::close(fd);
  return out;
}

TEST(TlsTest, GrpcAndHttpsServeOnlyTlsWithTheConfiguredCertificate) {
  TestEnv env;
  const std::string cert = env.root() + "/cert.pem", key = env.root() + "/key.pem";
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
      "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ", key, " -out ", cert, " 2>/dev/null");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  server::DaemonOptions options = env.Options();
  options.tls_cert_file = cert;
  options.tls_key_file = key;
  auto daemon = server::Daemon::Start(options);
  ASSERT_TRUE(daemon.ok()) << daemon.status();

  // gRPC over TLS, verifying the server against its certificate.
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = *ReadFileToString(cert);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto stub = ftd::v1::JobService::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", (*daemon)->grpc_port()), grpc::SslCredentials(ssl), args));
  grpc::ClientContext ctx;
  Authorize(&ctx, kTokenA);
  ftd::v1::CreateJobRequest req;
  *req.mutable_spec() = ValidSpec(env);
  ftd::v1::CreateJobResponse resp;
  grpc::Status st = stub->CreateJob(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  // Plaintext gRPC is refused.
  ftd::v1::FineTuneJob job;
  grpc::ClientContext plain_ctx;
  Authorize(&plain_ctx, kTokenA);
  plain_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  ftd::v1::GetJobRequest get;
  get.set_id(resp.job().id());
  EXPECT_FALSE(MakeStub((*daemon)->grpc_port())->GetJob(&plain_ctx, get, &job).ok());

  // HTTPS: verified, authenticated, same API.
  const int port = (*daemon)->http_port();
  std::string health = HttpsGet(port, cert, "/healthz", "");
  EXPECT_THAT(health, ::testing::StartsWith("HTTP/1.1 200"));
  std::string got = HttpsGet(port, cert, "/v1/jobs/" + resp.job().id(), kTokenA);
  EXPECT_THAT(got, ::testing::StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(got, ::testing::HasSubstr(resp.job().id()));
  EXPECT_THAT(HttpsGet(port, cert, "/v1/jobs", ""), ::testing::StartsWith("HTTP/1.1 401"));
  // Plain HTTP on the HTTPS port gets no HTTP answer.
  auto plain = HttpCall(port, "GET", "/healthz");
  EXPECT_TRUE(!plain.ok() || plain->status == 0);
  // A client that trusts another CA fails verification.
  const std::string other = env.root() + "/other.pem";
  ASSERT_EQ(std::system(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other "
                                     "-keyout ", env.root(), "/other.key -out ", other, " 2>/dev/null")
                            .c_str()),
            0);
  EXPECT_EQ(HttpsGet(port, other, "/healthz", ""), "");
}

TEST(TlsTest, HalfAConfigurationIsRefused) {
  TestEnv env;
  server::DaemonOptions options = env.Options();
  options.tls_cert_file = env.root() + "/cert.pem";
  auto daemon = server::Daemon::Start(options);
  EXPECT_EQ(daemon.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(daemon.status().message()), ::testing::HasSubstr("--tls-key"));
}

}  // namespace
}  // namespace ftd::testing
