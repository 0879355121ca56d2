// The files existing mirror checkers read to judge how fresh a mirror is,
// written into the mirror's tree after every applied serial:
//
//   project/trace/<name>   Debian's ftpsync trace format: the first line is
//                          the time of the sync (`date -u`), then "Key: value"
//                          lines (Date, Date-Started, Archive serial, Creator,
//                          Running on host, Upstream-mirror, ...). Checkers
//                          such as Debian's mirror status read these.
//   lastsync               Arch Linux's: the Unix time of the last sync.
//
// They are the mirror's own (not in the signed manifest): a path the
// manifest names is the origin's and is left alone. Written through
// directory descriptors (never following a symlinked parent), atomically,
// world-readable.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

struct TraceInfo {
  std::string name;  // the mirror's host name: project/trace/<name>
  std::string repo;
  uint64_t serial = 0;
  int64_t started_unix = 0;  // when the apply of this serial started
  int64_t applied_unix = 0;  // when it was durable
  std::string upstream;      // the broker it came from, HOST:PORT
  uint64_t bytes_fetched = 0;
};

// Whether `name` may be a trace file name: one path component, 1-255 bytes
// of [A-Za-z0-9._-], not starting with '.'.
bool ValidTraceName(std::string_view name);

// The trace file's text, and lastsync's.
std::string DebianTrace(const TraceInfo& info);
std::string ArchLastSync(const TraceInfo& info);

// Writes both into `tree`, skipping a path for which `named_by_manifest`
// returns true.
Status WriteTraceFiles(const std::filesystem::path& tree, const TraceInfo& info,
                       const std::function<bool(const std::string&)>& named_by_manifest);

// Whether `rel` is a file the subscriber writes itself (lastsync, or a file
// directly in project/trace/), or one of the directories it makes for them
// (project, project/trace): verify does not count them as extra.
bool IsTraceFilePath(std::string_view rel);
bool IsTraceDirPath(std::string_view rel);

}  // namespace mirrorcast
