// Command-line handling shared by every mirrorcast program: --help, --version,
// --config FILE (the same option names, "name = value" per line; the command
// line wins), --log-level. Errors throw (start-up only) and main() prints them.
#pragma once

#include <boost/program_options.hpp>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/base/status.h"

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

// The values of a repeatable path option (--trust A --trust B), none when
// it was not given.
std::vector<std::filesystem::path> PathList(const boost::program_options::variables_map& vm,
                                            const std::string& name);

// A --timeout-style option in seconds (a double, 0 < s <= 86400) as
// milliseconds, rounded up; throws with "bad --NAME: ..." otherwise.
std::chrono::milliseconds TimeoutOption(const boost::program_options::variables_map& vm,
                                        const std::string& name = "timeout");

// The daemons' trust flags: fixed keys (--trust) or a root key (--root-key),
// exactly one of them; throws otherwise.
void ReadTrustFlags(const boost::program_options::variables_map& vm,
                    std::vector<std::filesystem::path>* trust,
                    std::vector<std::filesystem::path>* root_keys);

// --check-config: prints "PROGRAM: configuration OK" (stdout) and returns 0,
// or "PROGRAM: configuration error: ..." (stderr) and returns 2.
int ReportConfigCheck(const char* program, const Status& checked);

// Runs `body` and turns an escaped exception into "NAME: error: ..." on stderr
// and exit code 2 (usage or start-up error).
int RunMain(const char* program, int (*body)(int, char**), int argc, char** argv);

}  // namespace mirrorcast
