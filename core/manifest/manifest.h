// A repository manifest in memory: every path with its kind, size, SHA-256,
// mode, mtime and symlink target; its identity; diffs between two.
//
// Its identity (Digest()) is the root of its chunked form (format v2,
// core/manifest/chunks.h and docs/protocol.md): what publishers sign. It does
// not depend on protobuf serialization. Daemons never hold a whole large
// manifest in memory to handle an update (they work on chunks); this class
// serves scans, scrubs and tests.
//
// Not thread-safe; a Manifest belongs to one thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

class Manifest {
 public:
  using Entries = std::map<std::string, v1::FileEntry, std::less<>>;

  Manifest() = default;
  Manifest(std::string repo, uint64_t serial) : repo_(std::move(repo)), serial_(serial) {}

  const std::string& repo() const { return repo_; }
  uint64_t serial() const { return serial_; }
  void set_repo(std::string repo) { repo_ = std::move(repo); }
  void set_serial(uint64_t serial) { serial_ = serial; }

  const Entries& entries() const { return entries_; }
  const v1::FileEntry* Find(std::string_view path) const;
  // Inserts or replaces the entry at entry.path(). The caller has validated it.
  void Put(v1::FileEntry entry);
  void Erase(std::string_view path);
  size_t size() const { return entries_.size(); }

  // 32-byte root of the chunked manifest (see above). O(entries).
  std::string Digest() const;

  // Protobuf form and back. FromProto validates every entry (CheckEntry),
  // rejects duplicates and unsorted input, and never asserts on bad bytes.
  v1::Manifest ToProto() const;
  std::string Serialize() const;
  static Result<Manifest> FromProto(const v1::Manifest& proto);
  static Result<Manifest> Parse(std::string_view bytes);

  // Applies a RepoChanged change list: ADDED requires the path absent,
  // MODIFIED and DELETED require it present (and previous_sha256, when set,
  // to match). Leaves *this unchanged on error.
  Status ApplyChanges(const google::protobuf::RepeatedPtrField<v1::Change>& changes);

 private:
  std::string repo_;
  uint64_t serial_ = 0;
  Entries entries_;
};

// A well-formed entry: valid path, known kind, 32-byte sha256 for files and
// none otherwise, mode <= 07777, safe symlink target for symlinks.
Status CheckEntry(const v1::FileEntry& entry);

// "added", "modified", "deleted" (or "unknown"), for messages.
const char* ChangeKindName(v1::ChangeKind kind);

// Whether two entries describe the same thing (all fields equal).
bool SameEntry(const v1::FileEntry& a, const v1::FileEntry& b);

// The change list that turns `from` into `to`, in path order: ADDED, MODIFIED
// (previous_sha256 set for files) and DELETED (path and kind only).
std::vector<v1::Change> DiffManifests(const Manifest& from, const Manifest& to);

}  // namespace mirrorcast
