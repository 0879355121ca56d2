// The manifest as a Merkle structure over sorted paths (format v2,
// docs/protocol.md §3): entries in bytewise path order are cut into
// content-defined chunks; a chunk's id is the SHA-256 of its canonical
// bytes; the manifest index lists every chunk (id, entry count, byte size,
// last path); the manifest's identity, the root that the publisher signs, is
// the SHA-256 of the index's bytes.
//
// Why: a change of k entries re-encodes only the chunks that hold them (and
// the index), so the publisher, the broker and every mirror re-derive the
// signed root in O(k * chunk + chunks), not O(entries); the broker stores each
// chunk once however many serials name it; a mirror fetches only the chunks
// it does not already have.
//
// Chunk boundaries depend only on the entries: an entry closes its chunk when
// FNV-1a-64 of its path has its top 10 bits zero (1 in 1024), or when the
// chunk reached kChunkMaxEntries entries or kChunkCloseBytes bytes. So an
// insert or delete moves at most the boundaries around it, and re-chunking
// can stop as soon as a new boundary falls on an old one.
//
// Pure functions and small value types; thread-compatible (no shared state).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "core/manifest/manifest.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

inline constexpr uint32_t kChunkMaxEntries = 8192;
inline constexpr size_t kChunkCloseBytes = 768 * 1024;
// A chunk's bytes never exceed this (the close limit plus one record).
inline constexpr size_t kMaxChunkBytes = 1u << 20;
// An index of this size names about 500 k chunks (~500 M entries).
inline constexpr size_t kMaxIndexBytes = 64u << 20;
// Longest path or symlink target a record may carry.
inline constexpr size_t kMaxRecordString = 4096;

// Whether `path` closes its chunk by the hash rule alone.
bool IsChunkBoundary(std::string_view path);

// The canonical record of one (checked) entry, appended to `out`.
void AppendEntryRecord(std::string* out, const v1::FileEntry& entry);

// Decodes a chunk's bytes: every entry checked (CheckEntry), paths strictly
// increasing. Never asserts on bad bytes.
Result<std::vector<v1::FileEntry>> DecodeChunk(std::string_view bytes);

struct ChunkRef {
  std::string id;  // SHA-256 of the chunk's bytes, 32 raw bytes
  uint32_t entries = 0;
  uint32_t bytes = 0;
  std::string last_path;  // the chunk's greatest path
};

// The list of chunks of one manifest, in path order.
struct ManifestIndex {
  std::vector<ChunkRef> refs;

  uint64_t entries() const;
  std::string Encode() const;
  // Checks structure: sizes within limits, last paths strictly increasing.
  static Result<ManifestIndex> Decode(std::string_view bytes);
  // The manifest's identity: SHA-256 of Encode(). An empty manifest has one
  // too (of the bytes of an index with no chunks).
  std::string Root() const;
  // Position of the chunk that holds `path`, or would if it were added: the
  // first whose last path is >= path, else the last chunk. refs must not be
  // empty.
  size_t Locate(std::string_view path) const;
};

// Where chunk bytes come from (a store, a fetch from a broker, a layer of
// chunks just built). Implementations need not check the id; the readers
// below do.
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  virtual Result<std::string> LoadChunk(std::string_view id) = 0;
};

// Chunks kept in memory by id; an optional fallback is asked for the rest.
class MemoryChunks : public ChunkSource {
 public:
  explicit MemoryChunks(ChunkSource* fallback = nullptr) : fallback_(fallback) {}
  void Put(std::string id, std::string bytes) { chunks_.emplace(std::move(id), std::move(bytes)); }
  bool Has(std::string_view id) const { return chunks_.find(id) != chunks_.end(); }
  const std::map<std::string, std::string, std::less<>>& chunks() const { return chunks_; }
  Result<std::string> LoadChunk(std::string_view id) override;

 private:
  ChunkSource* fallback_;
  std::map<std::string, std::string, std::less<>> chunks_;
};

// Loads chunk `ref` and decodes it, checking its id, its entry count and
// its last path, and that its first path is greater than `after` (the last
// path of the chunk before it; empty for the first chunk).
Result<std::vector<v1::FileEntry>> LoadChunkEntries(ChunkSource& source, const ChunkRef& ref,
                                                    std::string_view after);

// Receives each chunk the moment it is closed.
using ChunkSink = std::function<Status(const ChunkRef& ref, std::string bytes)>;

// Cuts entries (given in strictly increasing path order) into chunks.
class Chunker {
 public:
  explicit Chunker(ChunkSink sink) : sink_(std::move(sink)) {}
  Status Add(const v1::FileEntry& entry);
  // Closes the open chunk, if any.
  Status Finish();
  // True when no chunk is open (the last entry added closed one).
  bool closed() const { return open_entries_ == 0; }
  const std::vector<ChunkRef>& refs() const { return refs_; }

 private:
  Status Close();
  ChunkSink sink_;
  std::string bytes_;
  std::string last_path_;
  std::string previous_path_;  // across chunks, for the order check
  uint32_t open_entries_ = 0;
  std::vector<ChunkRef> refs_;
};

// The index of a whole manifest; every chunk goes to `sink` (may be null).
Result<ManifestIndex> BuildIndex(const Manifest& manifest, const ChunkSink& sink);

// Applies a change list, sorted by path with one change per path, to the
// manifest `old` describes: ADDED needs the path absent, MODIFIED and DELETED
// present (MODIFIED with previous_sha256 set needs that content, DELETED the
// same kind). Reads only the chunks the changes fall in (and a neighbour when
// a boundary moves); every chunk that is new goes to `sink`. Fails without
// side effects other than calls to `sink`.
Result<ManifestIndex> ApplyChangesToIndex(const ManifestIndex& old, ChunkSource& source,
                                          const std::vector<v1::Change>& changes,
                                          const ChunkSink& sink);
Result<ManifestIndex> ApplyChangesToIndex(
    const ManifestIndex& old, ChunkSource& source,
    const google::protobuf::RepeatedPtrField<v1::Change>& changes, const ChunkSink& sink);

// Receives the changes of a diff in path order.
using ChangeSink = std::function<Status(v1::Change change)>;

// The change list that turns manifest `from` into `to` (as DiffManifests
// would give), reading only the chunks that are not in both.
Status DiffIndexes(const ManifestIndex& from, ChunkSource& from_source, const ManifestIndex& to,
                   ChunkSource& to_source, const ChangeSink& sink);

// The same diff as pairs: for each path that differs, its entry in `from`
// (null when added) and in `to` (null when deleted), in path order.
using EntryPairSink =
    std::function<Status(const v1::FileEntry* before, const v1::FileEntry* after)>;
Status DiffIndexEntries(const ManifestIndex& from, ChunkSource& from_source,
                        const ManifestIndex& to, ChunkSource& to_source, const EntryPairSink& sink);

// The entries of a manifest in path order, one chunk in memory at a time,
// leaving out the chunks whose ids are in `skip` (may be null). Each chunk
// is checked as LoadChunkEntries does. One thread.
class ManifestEntryStream {
 public:
  ManifestEntryStream(const ManifestIndex& index, ChunkSource& source,
                      const std::set<std::string>* skip = nullptr)
      : index_(index), source_(source), skip_(skip) {}
  // The current entry, or null at the end.
  Result<const v1::FileEntry*> Peek();
  void Next() { ++pos_; }

 private:
  const ManifestIndex& index_;
  ChunkSource& source_;
  const std::set<std::string>* skip_;
  size_t next_ref_ = 0;
  std::vector<v1::FileEntry> buffer_;
  size_t pos_ = 0;
};

// Every entry of a manifest in path order, chunk by chunk.
using EntrySink = std::function<Status(v1::FileEntry entry)>;
Status ForEachEntry(const ManifestIndex& index, ChunkSource& source, const EntrySink& sink);

}  // namespace mirrorcast
