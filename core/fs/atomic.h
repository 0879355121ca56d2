// Durable, atomic file operations: stage on the same filesystem, fsync,
// rename, fsync the directory.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release();
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

Status FsyncFd(int fd, std::string_view what);
Status FsyncPath(const std::filesystem::path& path);  // file or directory
Status FsyncDir(const std::filesystem::path& dir);
// syncfs(2) of the filesystem holding `path`: one call makes every file and
// rename on it durable, far cheaper than an fsync per file for a batch.
Status SyncFilesystem(const std::filesystem::path& path);

// Writes `data` to `path` atomically and durably: a temporary file in the same
// directory, fsync, chmod `mode`, rename over `path`, fsync the directory.
Status WriteFileAtomic(const std::filesystem::path& path, std::string_view data,
                       mode_t mode = 0644);

// Reads a whole small file (config, key, manifest) with a size limit.
Result<std::string> ReadFileToString(const std::filesystem::path& path, size_t max_bytes);

// rename(2) then fsync of the destination directory (and of the source
// directory when it differs).
Status RenameDurable(const std::filesystem::path& from, const std::filesystem::path& to);

// Creates root/rel and its missing parents as directories with `mode`,
// refusing to follow symlinks (CheckNoSymlinkParents semantics).
Status MakeDirsUnder(const std::filesystem::path& root, std::string_view rel, mode_t mode = 0755);
// The same, and returns a descriptor of root/rel (root itself for ""): what
// it names is inside root whatever happens to the names afterwards.
Result<UniqueFd> OpenDirsUnder(const std::filesystem::path& root, std::string_view rel,
                               mode_t mode = 0755);

// Sets permission bits (mode & 07777) and mtime (whole seconds, also used as
// atime) of `path`, without following a symlink for the times.
Status SetModeAndMtime(const std::filesystem::path& path, mode_t mode, int64_t mtime);

// Copies a regular file's content to `to` (created with `mode`, fsync'd), in
// bounded memory. Uses copy_file_range where the kernel offers it.
Status CopyFileContents(const std::filesystem::path& from, const std::filesystem::path& to,
                        mode_t mode, uint64_t* bytes_copied = nullptr);

// Same device? (rename across devices is not atomic, so staging must be on
// the tree's filesystem.)
Result<bool> SameFilesystem(const std::filesystem::path& a, const std::filesystem::path& b);

}  // namespace mirrorcast
