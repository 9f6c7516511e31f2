// Where ftctl connects and how it authenticates: flags first, then the environment
// (FTD_ENDPOINT, FTD_TOKEN, FTD_CA_CERT), then the config file ($FTD_CONFIG, else
// ~/.config/ftd/config.yaml; $XDG_CONFIG_HOME is honoured):
//
//   endpoint: ftd.example.com:7070
//   token: s3cr3t            # or token_file: ~/.config/ftd/token
//   tls: true                # implied by ca_cert
//   ca_cert: /etc/ftd/ca.pem
//   insecure_skip_verify: false
//   timeout: 30              # seconds per call
#pragma once

#include <string>

#include "absl/status/status.h"

namespace ftd::client {

inline constexpr char kDefaultEndpoint[] = "127.0.0.1:7070";

struct ClientOptions {
  std::string endpoint;     // HOST:PORT; "https://HOST:PORT" implies tls
  std::string token;
  std::string token_file;
  bool tls = false;
  std::string ca_cert;      // PEM file of the CA that signed the coordinator's certificate
  bool insecure_skip_verify = false;
  std::string server_name;  // TLS name override (when dialling an IP)
  double timeout_seconds = 0;  // per unary call; 0: default (30)
  std::string config_file;  // explicit --config; otherwise $FTD_CONFIG or the default path
  std::string config_used;  // set by Resolve: the file that was read, if any
};

// Fills unset fields of `options` from the environment and the config file; normalizes the
// endpoint. Errors name the config file and line.
absl::Status ResolveClientOptions(ClientOptions* options);

// The config file path that would be used (for messages and `ftctl version`).
std::string DefaultConfigPath();

}  // namespace ftd::client
