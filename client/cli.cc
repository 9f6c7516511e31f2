#include "client/cli.h"

#include <signal.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/version.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::client {

absl::StatusOr<Connection*> Cli::Connect() {
  if (connection != nullptr) return connection.get();
  if (absl::Status s = ResolveClientOptions(&options); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<Connection>> c = Connection::Create(options);
  if (!c.ok()) return c.status();
  connection = *std::move(c);
  return connection.get();
}

int Cli::Fail(const std::string& message) const {
  *err << "ftctl: " << OneLine(message) << std::endl;
  return kExitError;
}

int RunFtctl(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  Cli cli;
  cli.out = &std::cout;
  cli.err = &std::cerr;

  CLI::App app{"ftctl: submit and follow fine-tuning jobs on an ftd coordinator"};
  app.name("ftctl");
  app.require_subcommand(1);
  app.fallthrough();
  app.footer(R"(Connection: --endpoint/--token flags, else FTD_ENDPOINT/FTD_TOKEN, else the config file
($FTD_CONFIG or ~/.config/ftd/config.yaml: endpoint:, token: or token_file:, ca_cert:, tls:,
insecure_skip_verify:, server_name:, timeout:). Default endpoint: 127.0.0.1:7070.

Examples:
  ftctl submit -f job.yaml --set hyperparameters.lr=2e-5 --watch
  ftctl list --state RUNNING --label team=nlp
  ftctl watch job-0123abcd
  ftctl get job-0123abcd -o yaml
  ftctl plan -f job.yaml
  ftctl model inspect /models/Qwen3-30B-A3B

Exit codes: 0 ok (watch: SUCCEEDED), 1 error, 2 usage, 3 job FAILED, 4 job CANCELLED,
5 plan: does not fit.)");

  auto& o = cli.options;
  app.add_option("--endpoint,-e", o.endpoint, "coordinator gRPC address HOST:PORT (env FTD_ENDPOINT)");
  app.add_option("--token", o.token, "bearer token (env FTD_TOKEN)");
  app.add_option("--token-file", o.token_file, "file holding the bearer token");
  app.add_flag("--tls", o.tls, "use TLS (implied by --ca-cert or an https:// endpoint)");
  app.add_option("--ca-cert", o.ca_cert, "PEM CA certificate to verify the coordinator (env FTD_CA_CERT)");
  app.add_flag("--insecure-skip-verify", o.insecure_skip_verify,
               "TLS without verifying the coordinator's certificate (testing only)");
  app.add_option("--server-name", o.server_name, "expected TLS name of the coordinator");
  app.add_option("--timeout", o.timeout_seconds, "seconds per call (default 30)");
  app.add_option("--config", o.config_file, "config file (default $FTD_CONFIG or ~/.config/ftd/config.yaml)");
  app.add_option("--output,-o", cli.output, "output format: table, json, yaml or name")
      ->capture_default_str();

  auto* version = app.add_subcommand("version", "Print ftctl's version and API");
  version->footer("Examples:\n  ftctl version\n  ftctl version -o json");
  version->callback([&] {
    cli.action = [&] {
      absl::StatusOr<OutputFormat> f = cli.Format();
      if (!f.ok()) return cli.Fail(std::string(f.status().message()));
      const std::string api = ftd::v1::FineTuneJob::descriptor()->file()->package();
      if (*f == OutputFormat::kJson || *f == OutputFormat::kYaml) {
        PrintStructured(*cli.out, {{"client", ftd::kVersion}, {"api", api}}, *f);
      } else {
        *cli.out << "ftctl " << ftd::kVersion << " (api " << api << ")\n";
      }
      return kExitOk;
    };
  });

  AddJobCommands(app, cli);
  AddModelCommands(app, cli, argc > 0 ? argv[0] : "ftctl");
  AddCompletionCommand(app, cli);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e, std::cout, std::cerr);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e, std::cout, std::cerr);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e, std::cout, std::cerr);
    std::cerr << "ftctl: " << e.what() << " (see ftctl --help)" << std::endl;
    return kExitUsage;
  }
  if (!cli.action) return kExitUsage;
  return cli.action();
}

}  // namespace ftd::client
