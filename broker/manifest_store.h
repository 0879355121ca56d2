// The broker's manifest objects (format v2: chunks and indexes, see
// core/manifest/chunks.h), each kept once under its SHA-256 as
// <dir>/<first two hex digits>/<hex>, however many serials or repos name it.
//
// Writes are not durable one by one: a publish writes what it needs and then
// calls Sync() (one syncfs) before the event that names them is committed.
// Reads check the SHA-256, so a damaged file is never served as valid.
//
// Thread-compatible: the control thread writes and prunes; the content
// workers read the files by ObjectPath() only.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "core/manifest/chunks.h"

namespace mirrorcast {

class ManifestStore : public ChunkSource {
 public:
  explicit ManifestStore(std::filesystem::path dir) : dir_(std::move(dir)) {}

  static std::filesystem::path ObjectPath(const std::filesystem::path& dir,
                                          std::string_view sha256);
  const std::filesystem::path& dir() const { return dir_; }

  // Stores `bytes` under their SHA-256 (returned). `added` (optional): false
  // when the object was already there.
  Result<std::string> Put(std::string_view bytes, bool* added = nullptr);
  bool Has(std::string_view sha256) const;
  // The object's bytes, at most `max_bytes`, checked against its SHA-256.
  Result<std::string> Load(std::string_view sha256, size_t max_bytes);
  Result<std::string> LoadChunk(std::string_view id) override { return Load(id, kMaxChunkBytes); }
  Status Remove(std::string_view sha256);
  // Makes every object written since the last Sync() durable: an fsync of
  // each (and of its directory) when they are few, as after an ordinary
  // update; one syncfs for many (a first publish), or with `everything`
  // (objects another process run may have written, such as uploads made
  // before a restart).
  Status Sync(bool everything = false);

 private:
  std::filesystem::path dir_;
  std::vector<std::filesystem::path> unsynced_;
};

}  // namespace mirrorcast
