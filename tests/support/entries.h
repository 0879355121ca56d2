// Manifest entries for tests, as the scanner would record them.
#pragma once

#include <cstdint>
#include <string>

#include "core/crypto/sha256.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast::testing {

inline v1::FileEntry FileEntryOf(const std::string& path, const std::string& content,
                                 uint32_t mode = 0644, int64_t mtime = 1700000000) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_FILE);
  e.set_size(content.size());
  e.set_sha256(Sha256Of(content));
  e.set_mode(mode);
  e.set_mtime(mtime);
  return e;
}

inline v1::FileEntry DirEntryOf(const std::string& path, uint32_t mode = 0755) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_DIRECTORY);
  e.set_mode(mode);
  return e;
}

inline v1::FileEntry LinkEntryOf(const std::string& path, const std::string& target) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_SYMLINK);
  e.set_mode(0777);
  e.set_symlink_target(target);
  return e;
}

}  // namespace mirrorcast::testing
