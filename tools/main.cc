// mirrorcast: the admin command. Dispatches to one subcommand (tools/commands.h).
#include <cstring>
#include <iostream>
#include <string_view>

#include "core/base/version.h"
#include "core/cli/options.h"
#include "tools/commands.h"

namespace mirrorcast {
namespace {

struct Command {
  const char* name;
  const char* program;  // for error messages and --version
  int (*main)(int, char**);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"keygen", "mirrorcast keygen", KeygenMain,
     "create an Ed25519 signing key pair, or with --curve a CURVE transport key pair"},
    {"keys", "mirrorcast keys", KeysMain,
     "make, sign, show and publish key sets (rotation and revocation with --root-key)"},
    {"status", "mirrorcast status", StatusMain,
     "show a broker's repos and the state every mirror last reported"},
    {"recall", "mirrorcast recall", RecallMain,
     "roll every mirror back to an earlier serial's content after a bad push"},
    {"verify", "mirrorcast verify", VerifyMain,
     "re-hash a mirror tree against its signed manifest; --repair fixes it"},
};

void PrintUsage(std::ostream& out) {
  out << "Usage: mirrorcast COMMAND [options]\n\n"
      << "The mirrorcast admin command.\n\nCommands:\n";
  for (const Command& c : kCommands) {
    out << "  " << c.name << std::string(10 - std::strlen(c.name), ' ') << c.summary << "\n";
  }
  out << "\nRun 'mirrorcast COMMAND --help' for the options of a command.\n"
      << "Options:\n  -h [ --help ]  show this help and exit\n"
      << "  --version      show the version and exit\n";
}

int Dispatch(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(std::cerr);
    return 2;
  }
  const std::string_view first = argv[1];
  if (first == "--help" || first == "-h" || first == "help") {
    PrintUsage(std::cout);
    return 0;
  }
  if (first == "--version") {
    std::cout << "mirrorcast " << kVersion << "\n";
    return 0;
  }
  for (const Command& c : kCommands) {
    if (first == c.name) return RunMain(c.program, c.main, argc - 1, argv + 1);
  }
  std::cerr << "mirrorcast: error: unknown command '" << first << "'\n"
            << "Try 'mirrorcast --help'.\n";
  return 2;
}

}  // namespace
}  // namespace mirrorcast

int main(int argc, char** argv) { return mirrorcast::Dispatch(argc, argv); }
