// The subcommands of the `mirrorcast` admin command. Each takes argv shifted
// so that argv[0] is the subcommand name, parses its own options (with
// --help) and returns the process exit code: 0 success, 1 the operation
// failed, 2 usage error, 3 broker unreachable or timed out.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/base/status.h"

#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

// mirrorcast keygen [--curve] --out PREFIX
int KeygenMain(int argc, char** argv);

// The commands that talk to a broker also take --curve-key FILE --broker-key
// FILE, or --insecure-plaintext (core/cli/transport.h).
// mirrorcast keys make|sign|show|publish ... (key sets; see tools/keys.cc)
int KeysMain(int argc, char** argv);

// The key set a `keys make` description (statements one a line, see
// `mirrorcast keys make --help`) says; public key paths are relative to
// `base`, expiries to `now_unix`. Checked as KeySet::Decode checks.
Result<v1::KeySet> ParseKeySetDescription(std::string_view text, const std::filesystem::path& base,
                                          int64_t now_unix);

// mirrorcast status --broker HOST:PORT [--json] [--timeout S]
int StatusMain(int argc, char** argv);

// mirrorcast recall --broker HOST:PORT --key KEYFILE --repo R --to N --reason TEXT
//                   [--trust PUBFILE]... [--expiry-days D] [--timeout S]
int RecallMain(int argc, char** argv);

// mirrorcast verify --tree DIR --state DIR [--repo R] [--rate MBPS]
//                   [--repair --broker HOST:PORT [--delete-extra]] [--json]
int VerifyMain(int argc, char** argv);

// The human table printed by `status --wide`, ages relative to `now_unix`.
std::string FormatStatusTable(const v1::StatusReply& status, int64_t now_unix);
// The default `status` table: the same facts that matter most, every line at
// most `width` columns (long cells are cut with "...").
std::string FormatStatusCompact(const v1::StatusReply& status, int64_t now_unix,
                                size_t width = 100);

// `status --check`: a Nagios/Icinga-style verdict over every mirror.
struct StatusThresholds {
  uint64_t warn_behind = 2;     // serials behind the head for WARNING...
  uint64_t crit_behind = 5;     // ...and for CRITICAL
  int64_t warn_silent = 3600;   // a mirror behind the head whose last ACK is this old...
  int64_t crit_silent = 86400;  // ...is WARNING / CRITICAL (seconds)
};
struct StatusVerdict {
  int code = 0;      // 0 OK, 1 WARNING, 2 CRITICAL
  std::string line;  // "MIRRORCAST CRITICAL - ..." with perfdata after '|'
};
StatusVerdict CheckStatus(const v1::StatusReply& status, int64_t now_unix,
                          const StatusThresholds& thresholds);
// The one-line JSON object printed by `status --json`.
std::string FormatStatusJson(const v1::StatusReply& status);

}  // namespace mirrorcast
