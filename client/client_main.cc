// ftctl: the command-line client of the ftd coordinator (see client/cli.h).
#include "client/cli.h"

int main(int argc, char** argv) { return ftd::client::RunFtctl(argc, argv); }
