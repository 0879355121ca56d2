// Command-line handling shared by every mirrorcast program: --help, --version,
// --config FILE (the same option names, "name = value" per line; the command
// line wins), --log-level. Errors throw (start-up only) and main() prints them.
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>

namespace mirrorcast {

struct ProgramInfo {
  std::string name;     // "mirrorcast-broker"
  std::string usage;    // "mirrorcast-broker --listen HOST:PORT ... [options]"
  std::string summary;  // one paragraph for --help
};

// Parses the command line (and --config FILE). Returns nullopt when the
// program should exit 0 right away (--help, --version were printed to stdout).
// Throws std::exception with a readable message on a bad or missing option;
// options marked ->required() are checked after the config file is read.
// Also initialises logging from --log-level (default "info").
std::optional<boost::program_options::variables_map> ParseCommandLine(
    int argc, const char* const* argv, const ProgramInfo& info,
    const boost::program_options::options_description& options);

// Runs `body` and turns an escaped exception into "NAME: error: ..." on stderr
// and exit code 2 (usage or start-up error).
int RunMain(const char* program, int (*body)(int, char**), int argc, char** argv);

}  // namespace mirrorcast
