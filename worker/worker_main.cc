// ftd-worker: entry point. The full command line arrives with its issue; for now it reports its
// version so that the build, packaging and probes have a binary to call.
#include <cstdio>
#include <cstring>

#include "common/version.h"
#include "ftd/v1/jobs.pb.h"

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--version") == 0 || std::strcmp(argv[1], "version") == 0)) {
    std::printf("ftd-worker %s (api %s)\n", ftd::kVersion, ftd::v1::FineTuneJob::descriptor()->full_name().c_str());
    return 0;
  }
  std::fprintf(stderr, "usage: ftd-worker --version\n");
  return 2;
}
