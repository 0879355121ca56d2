// The broker's retained store: <state>/objects/<repo>/<xx>/<sha256-hex>, one
// object per published file version, so that a version stays servable after
// the release tooling has replaced or deleted it in the tree (the keep window
// is BrokerOptions::keep_versions; BrokerState says which objects exist).
//
// An object is a hard link to the tree file's inode: no copy is made, and
// when the tooling later renames a new version over the path, the old inode
// lives on in the store. When the state directory is on another filesystem
// than the tree (link fails with EXDEV), a reflink (ioctl FICLONE: a new
// inode sharing the extents) is tried instead; when that fails too, versions
// on that filesystem are not retained (logged once per filesystem) and only
// current versions are served, from the tree. An edit in place changes the
// object too (it is the same inode): such a version is then refused by its
// identity check, never served with other bytes.
//
// Objects are not fsync'd one by one: an object lost in a crash only means
// that version is served from the tree while the tree still holds it.
//
// Threads: Retain and Remove from the control thread only; PathOf from any.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "broker/served_file.h"
#include "core/base/status.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

enum class ObjectKind : int { kLink = 1, kClone = 2 };

struct RetainedObject {
  ObjectKind kind = ObjectKind::kLink;
  FileIdentity identity;  // of the object, taken after it was made
};

class ObjectStore {
 public:
  explicit ObjectStore(std::filesystem::path dir) : dir_(std::move(dir)) {}

  // <dir>/<repo>/<first two hex digits>/<hex>. `sha256` is 32 raw bytes.
  std::filesystem::path PathOf(std::string_view repo, std::string_view sha256) const;

  // Makes the file open in `source` (opened by OpenInTree) the object of
  // `sha256`, replacing an object of that name. Returns nullopt when it was
  // not retained: the filesystem cannot (logged once per filesystem), or the
  // link was refused (EPERM, EMLINK, ...: the reason in `why_not`, for the
  // caller's one summary line per publish); kRejected when the tree's path no longer names the
  // inode in `source` (it changed while the broker was looking at it). A hard link moves the
  // inode's ctime: `source.st` is left as it was before, the result carries
  // the identity after.
  Result<std::optional<RetainedObject>> Retain(std::string_view repo, std::string_view sha256,
                                               const OpenedFile& source,
                                               std::string* why_not = nullptr);

  // Removes an object; a missing one is fine.
  Status Remove(std::string_view repo, std::string_view sha256);

 private:
  enum class Mode { kLink, kClone, kNone };
  Result<std::optional<RetainedObject>> Clone(int dir_fd, const std::string& tmp,
                                              const std::string& name, const OpenedFile& source,
                                              const std::filesystem::path& shown);

  std::filesystem::path dir_;
  std::map<uint64_t, Mode> mode_by_device_;  // learnt from the first EXDEV per device
  static constexpr size_t kMaxCachedDirs = 1024;
  std::map<std::string, UniqueFd> dir_fds_;  // <repo>/<xx> directories, control thread only
};

}  // namespace mirrorcast
