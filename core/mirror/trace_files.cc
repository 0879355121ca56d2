#include "core/mirror/trace_files.h"

#include <ctime>

#include "core/base/version.h"
#include "core/fs/atomic.h"
#include "core/fs/dir_ops.h"

namespace mirrorcast {

namespace {

constexpr std::string_view kTraceDir = "project/trace";
constexpr std::string_view kLastSync = "lastsync";

std::string FormatUtc(int64_t unix_seconds, const char* format) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  const size_t n = std::strftime(buf, sizeof(buf), format, &tm);
  return std::string(buf, n);
}

// RFC 2822, as `date -R -u` prints it.
std::string Rfc2822(int64_t unix_seconds) {
  return FormatUtc(unix_seconds, "%a, %d %b %Y %H:%M:%S +0000");
}

}  // namespace

bool ValidTraceName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '.') return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string DebianTrace(const TraceInfo& info) {
  std::string out;
  out += FormatUtc(info.applied_unix, "%a %b %e %H:%M:%S UTC %Y") + "\n";  // `date -u`
  out += "Date: " + Rfc2822(info.applied_unix) + "\n";
  out += "Date-Started: " + Rfc2822(info.started_unix) + "\n";
  out += "Archive serial: " + std::to_string(info.serial) + "\n";
  out += "Creator: mirrorcast " + std::string(kVersion) + "\n";
  out += "Running on host: " + info.name + "\n";
  out += "Trigger: push (mirrorcast repo " + info.repo + " serial " + std::to_string(info.serial) +
         ")\n";
  if (!info.upstream.empty()) out += "Upstream-mirror: " + info.upstream + "\n";
  out += "Total bytes received: " + std::to_string(info.bytes_fetched) + "\n";
  out += "Total time spent: " + std::to_string(info.applied_unix - info.started_unix) + "\n";
  return out;
}

std::string ArchLastSync(const TraceInfo& info) { return std::to_string(info.applied_unix) + "\n"; }

Status WriteTraceFiles(const std::filesystem::path& tree, const TraceInfo& info,
                       const std::function<bool(const std::string&)>& named_by_manifest) {
  if (!ValidTraceName(info.name)) {
    return Status::InvalidArgument("trace file name '" + info.name + "' is not a plain file name");
  }
  const std::string trace_path = std::string(kTraceDir) + "/" + info.name;
  if (!named_by_manifest(trace_path)) {
    MC_ASSIGN_OR_RETURN(UniqueFd dir, OpenDirsUnder(tree, kTraceDir));
    MC_RETURN_IF_ERROR(WriteFileAt(dir.get(), info.name, DebianTrace(info), 0644, trace_path));
  }
  const std::string last(kLastSync);
  if (!named_by_manifest(last)) {
    MC_ASSIGN_OR_RETURN(UniqueFd root, OpenDirUnder(tree, ""));
    MC_RETURN_IF_ERROR(WriteFileAt(root.get(), last, ArchLastSync(info), 0644, last));
  }
  return Status::Ok();
}

bool IsTraceFilePath(std::string_view rel) {
  if (rel == kLastSync) return true;
  if (rel.size() <= kTraceDir.size() + 1 || !rel.starts_with(kTraceDir) ||
      rel[kTraceDir.size()] != '/') {
    return false;
  }
  return rel.substr(kTraceDir.size() + 1).find('/') == std::string_view::npos;
}

bool IsTraceDirPath(std::string_view rel) { return rel == "project" || rel == kTraceDir; }

}  // namespace mirrorcast
