#include "core/manifest/chunks.h"

#include <algorithm>
#include <optional>
#include <set>

#include "core/crypto/sha256.h"
#include "core/fs/path.h"

namespace mirrorcast {
namespace {

constexpr std::string_view kIndexMagic = "mirrorcast-index-v2\n";

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

uint64_t ZigZag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
int64_t UnZigZag(uint64_t v) { return static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1)); }

void PutString(std::string* out, std::string_view s) {
  PutVarint(out, s.size());
  out->append(s);
}

// Bounded reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  bool done() const { return pos_ == bytes_.size(); }
  size_t pos() const { return pos_; }

  bool Varint(uint64_t* v) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= bytes_.size()) return false;
      const auto b = static_cast<unsigned char>(bytes_[pos_++]);
      result |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        *v = result;
        return true;
      }
    }
    return false;
  }
  bool Bytes(size_t n, std::string_view* out) {
    if (bytes_.size() - pos_ < n) return false;
    *out = bytes_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool String(size_t max, std::string_view* out) {
    uint64_t n = 0;
    if (!Varint(&n) || n > max) return false;
    return Bytes(static_cast<size_t>(n), out);
  }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

// One record; false on bytes that are not a record (checked further by
// CheckEntry and by re-encoding).
bool ReadRecord(Reader& r, v1::FileEntry* e) {
  std::string_view path, kind;
  if (!r.String(kMaxRecordString, &path) || !r.Bytes(1, &kind)) return false;
  e->set_path(std::string(path));
  uint64_t mode = 0;
  switch (kind[0]) {
    case 'f': {
      uint64_t size = 0, mtime = 0;
      std::string_view sha;
      if (!r.Varint(&size) || !r.Bytes(kSha256Size, &sha) || !r.Varint(&mode) ||
          !r.Varint(&mtime)) {
        return false;
      }
      e->set_kind(v1::ENTRY_FILE);
      e->set_size(size);
      e->set_sha256(std::string(sha));
      e->set_mtime(UnZigZag(mtime));
      break;
    }
    case 'l': {
      std::string_view target;
      if (!r.Varint(&mode) || !r.String(kMaxRecordString, &target)) return false;
      e->set_kind(v1::ENTRY_SYMLINK);
      e->set_symlink_target(std::string(target));
      break;
    }
    case 'd':
      if (!r.Varint(&mode)) return false;
      e->set_kind(v1::ENTRY_DIRECTORY);
      break;
    default:
      return false;
  }
  if (mode > 07777) return false;
  e->set_mode(static_cast<uint32_t>(mode));
  return true;
}

// The entry that `change` leaves at its path (nullopt: none), given what is
// there now (`existing`, may be null). `i` names the change in errors.
Result<std::optional<v1::FileEntry>> ApplyOne(const v1::Change& change,
                                              const v1::FileEntry* existing, size_t i) {
  const v1::FileEntry& entry = change.entry();
  auto where = [&]() {
    return "change " + std::to_string(i) + " (" + ChangeKindName(change.kind()) + ")";
  };
  switch (change.kind()) {
    case v1::CHANGE_ADDED:
    case v1::CHANGE_MODIFIED: {
      Status ok = CheckEntry(entry);
      if (!ok.ok()) return ok.WithContext(where());
      if (change.kind() == v1::CHANGE_ADDED && existing != nullptr) {
        return Status::FailedPrecondition(where() + ": " + entry.path() + " already exists");
      }
      if (change.kind() == v1::CHANGE_MODIFIED) {
        if (existing == nullptr) {
          return Status::FailedPrecondition(where() + ": " + entry.path() + " does not exist");
        }
        if (!change.previous_sha256().empty() && change.previous_sha256() != existing->sha256()) {
          return Status::FailedPrecondition(where() + ": " + entry.path() +
                                            " does not have the content the change replaces");
        }
      }
      return std::optional<v1::FileEntry>(entry);
    }
    case v1::CHANGE_DELETED:
      if (existing == nullptr) {
        return Status::FailedPrecondition(where() + ": " + entry.path() + " does not exist");
      }
      if (existing->kind() != entry.kind()) {
        return Status::FailedPrecondition(where() + ": " + entry.path() +
                                          " is not of the kind the change deletes");
      }
      return std::optional<v1::FileEntry>();
    default:
      return Status::InvalidArgument(where() + ": unknown change kind " +
                                     std::to_string(static_cast<int>(change.kind())));
  }
}

// Changes must be sorted by path, one per path, each path valid.
Status CheckChangeOrder(const v1::Change* begin, const v1::Change* end) {
  const std::string* previous = nullptr;
  size_t i = 0;
  for (const v1::Change* c = begin; c != end; ++c, ++i) {
    const std::string& path = c->entry().path();
    Status ok = ValidateRelativePath(path);
    if (!ok.ok()) return ok.WithContext("change " + std::to_string(i));
    if (previous != nullptr && !(*previous < path)) {
      return Status::InvalidArgument(
          "change " + std::to_string(i) +
          (*previous == path ? " repeats the path of the one before" : " is out of path order"));
    }
    previous = &path;
  }
  return Status::Ok();
}

Result<ManifestIndex> ApplyChangesImpl(const ManifestIndex& old, ChunkSource& source,
                                       const v1::Change* changes, size_t count,
                                       const ChunkSink& sink) {
  MC_RETURN_IF_ERROR(CheckChangeOrder(changes, changes + count));
  ManifestIndex out;
  Chunker chunker([&](const ChunkRef& ref, std::string bytes) -> Status {
    out.refs.push_back(ref);
    return sink ? sink(ref, std::move(bytes)) : Status::Ok();
  });
  size_t ci = 0;
  auto feed = [&](const v1::FileEntry* existing, const v1::Change* change) -> Status {
    if (change == nullptr) return chunker.Add(*existing);
    MC_ASSIGN_OR_RETURN(std::optional<v1::FileEntry> next,
                        ApplyOne(*change, existing, static_cast<size_t>(change - changes)));
    if (next) MC_RETURN_IF_ERROR(chunker.Add(*next));
    return Status::Ok();
  };

  const size_t n = old.refs.size();
  if (n == 0) {
    for (; ci < count; ++ci) MC_RETURN_IF_ERROR(feed(nullptr, &changes[ci]));
    MC_RETURN_IF_ERROR(chunker.Finish());
    return out;
  }
  size_t ri = 0;
  while (ci < count) {
    const size_t p = old.Locate(changes[ci].entry().path());
    for (; ri < p; ++ri) out.refs.push_back(old.refs[ri]);
    // Re-chunk from the start of chunk ri until a new boundary falls on an
    // old one with no change left before it.
    do {
      const std::string after = ri == 0 ? "" : old.refs[ri - 1].last_path;
      MC_ASSIGN_OR_RETURN(std::vector<v1::FileEntry> entries,
                          LoadChunkEntries(source, old.refs[ri], after));
      const bool last = ri + 1 == n;
      const std::string& upper = old.refs[ri].last_path;
      auto in_chunk = [&](size_t c) {
        return c < count && (last || changes[c].entry().path() <= upper);
      };
      size_t ei = 0;
      while (ei < entries.size() || in_chunk(ci)) {
        if (!in_chunk(ci)) {
          MC_RETURN_IF_ERROR(feed(&entries[ei++], nullptr));
        } else if (ei == entries.size() || changes[ci].entry().path() < entries[ei].path()) {
          MC_RETURN_IF_ERROR(feed(nullptr, &changes[ci++]));
        } else if (changes[ci].entry().path() == entries[ei].path()) {
          MC_RETURN_IF_ERROR(feed(&entries[ei++], &changes[ci++]));
        } else {
          MC_RETURN_IF_ERROR(feed(&entries[ei++], nullptr));
        }
      }
      ++ri;
    } while (ri < n && !chunker.closed());
    if (ri == n) break;
  }
  // Everything after the last re-chunked region is unchanged.
  for (; ri < n; ++ri) out.refs.push_back(old.refs[ri]);
  MC_RETURN_IF_ERROR(chunker.Finish());
  return out;
}

}  // namespace

bool IsChunkBoundary(std::string_view path) { return (Fnv1a64(path) >> 54) == 0; }

void AppendEntryRecord(std::string* out, const v1::FileEntry& e) {
  PutString(out, e.path());
  switch (e.kind()) {
    case v1::ENTRY_FILE:
      out->push_back('f');
      PutVarint(out, e.size());
      out->append(e.sha256());
      PutVarint(out, e.mode());
      PutVarint(out, ZigZag(e.mtime()));
      break;
    case v1::ENTRY_SYMLINK:
      out->push_back('l');
      PutVarint(out, e.mode());
      PutString(out, e.symlink_target());
      break;
    default:
      out->push_back('d');
      PutVarint(out, e.mode());
      break;
  }
}

Result<std::vector<v1::FileEntry>> DecodeChunk(std::string_view bytes) {
  if (bytes.size() > kMaxChunkBytes) {
    return Status::ResourceExhausted("manifest chunk of " + std::to_string(bytes.size()) +
                                     " bytes is over the limit");
  }
  std::vector<v1::FileEntry> entries;
  Reader r(bytes);
  std::string again;
  while (!r.done()) {
    const size_t start = r.pos();
    v1::FileEntry e;
    if (!ReadRecord(r, &e)) {
      return Status::Corruption("manifest chunk: malformed record " +
                                std::to_string(entries.size()));
    }
    Status ok = CheckEntry(e);
    if (!ok.ok()) return ok.WithContext("manifest chunk record " + std::to_string(entries.size()));
    again.clear();
    AppendEntryRecord(&again, e);
    if (again != bytes.substr(start, r.pos() - start)) {
      return Status::Corruption("manifest chunk: record " + std::to_string(entries.size()) +
                                " is not in canonical form");
    }
    if (!entries.empty() && !(entries.back().path() < e.path())) {
      return Status::Corruption("manifest chunk: record " + std::to_string(entries.size()) +
                                " is out of path order");
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

uint64_t ManifestIndex::entries() const {
  uint64_t total = 0;
  for (const auto& r : refs) total += r.entries;
  return total;
}

std::string ManifestIndex::Encode() const {
  std::string out(kIndexMagic);
  PutVarint(&out, refs.size());
  for (const auto& r : refs) {
    out.append(r.id);
    PutVarint(&out, r.entries);
    PutVarint(&out, r.bytes);
    PutString(&out, r.last_path);
  }
  return out;
}

Result<ManifestIndex> ManifestIndex::Decode(std::string_view bytes) {
  if (bytes.size() > kMaxIndexBytes) {
    return Status::ResourceExhausted("manifest index of " + std::to_string(bytes.size()) +
                                     " bytes is over the limit");
  }
  if (bytes.substr(0, kIndexMagic.size()) != kIndexMagic) {
    return Status::Corruption("not a mirrorcast manifest index (v2)");
  }
  Reader r(bytes.substr(kIndexMagic.size()));
  uint64_t count = 0;
  // Each ref takes at least 36 bytes: a count above that is a lie.
  if (!r.Varint(&count) || count > bytes.size() / 36) {
    return Status::Corruption("manifest index: bad chunk count");
  }
  ManifestIndex index;
  index.refs.reserve(static_cast<size_t>(count));
  for (uint64_t i = 0; i < count; ++i) {
    ChunkRef ref;
    std::string_view id, last;
    uint64_t entries = 0, size = 0;
    if (!r.Bytes(kSha256Size, &id) || !r.Varint(&entries) || !r.Varint(&size) ||
        !r.String(kMaxRecordString, &last)) {
      return Status::Corruption("manifest index: malformed chunk " + std::to_string(i));
    }
    if (entries == 0 || entries > kChunkMaxEntries || size == 0 || size > kMaxChunkBytes) {
      return Status::Corruption("manifest index: chunk " + std::to_string(i) +
                                " has an impossible size");
    }
    if (Status ok = ValidateRelativePath(last); !ok.ok()) {
      return ok.WithContext("manifest index chunk " + std::to_string(i));
    }
    if (!index.refs.empty() && !(index.refs.back().last_path < last)) {
      return Status::Corruption("manifest index: chunk " + std::to_string(i) +
                                " is out of path order");
    }
    ref.id = std::string(id);
    ref.entries = static_cast<uint32_t>(entries);
    ref.bytes = static_cast<uint32_t>(size);
    ref.last_path = std::string(last);
    index.refs.push_back(std::move(ref));
  }
  if (!r.done()) return Status::Corruption("manifest index: trailing bytes");
  if (index.Encode() != bytes) return Status::Corruption("manifest index is not canonical");
  return index;
}

std::string ManifestIndex::Root() const { return Sha256Of(Encode()); }

size_t ManifestIndex::Locate(std::string_view path) const {
  auto it = std::lower_bound(refs.begin(), refs.end(), path,
                             [](const ChunkRef& r, std::string_view p) { return r.last_path < p; });
  if (it == refs.end()) return refs.size() - 1;
  return static_cast<size_t>(it - refs.begin());
}

Result<std::string> MemoryChunks::LoadChunk(std::string_view id) {
  auto it = chunks_.find(id);
  if (it != chunks_.end()) return it->second;
  if (fallback_ != nullptr) return fallback_->LoadChunk(id);
  return Status::NotFound("manifest chunk " + ToHex(id) + " is not at hand");
}

Result<std::vector<v1::FileEntry>> LoadChunkEntries(ChunkSource& source, const ChunkRef& ref,
                                                    std::string_view after) {
  MC_ASSIGN_OR_RETURN(std::string bytes, source.LoadChunk(ref.id));
  if (bytes.size() != ref.bytes || Sha256Of(bytes) != ref.id) {
    return Status::Corruption("manifest chunk " + ToHex(ref.id) +
                              " does not match its id in the index");
  }
  MC_ASSIGN_OR_RETURN(std::vector<v1::FileEntry> entries, DecodeChunk(bytes));
  if (entries.size() != ref.entries || entries.back().path() != ref.last_path ||
      !(std::string_view(entries.front().path()) > after)) {
    return Status::Corruption("manifest chunk " + ToHex(ref.id) +
                              " does not fit its place in the index");
  }
  return entries;
}

Status Chunker::Add(const v1::FileEntry& entry) {
  if (!previous_path_.empty() && !(previous_path_ < entry.path())) {
    return Status::InvalidArgument("manifest entries out of path order at " + entry.path());
  }
  previous_path_ = entry.path();
  AppendEntryRecord(&bytes_, entry);
  last_path_ = entry.path();
  ++open_entries_;
  if (IsChunkBoundary(entry.path()) || open_entries_ >= kChunkMaxEntries ||
      bytes_.size() >= kChunkCloseBytes) {
    return Close();
  }
  return Status::Ok();
}

Status Chunker::Finish() { return open_entries_ == 0 ? Status::Ok() : Close(); }

Status Chunker::Close() {
  ChunkRef ref;
  ref.id = Sha256Of(bytes_);
  ref.entries = open_entries_;
  ref.bytes = static_cast<uint32_t>(bytes_.size());
  ref.last_path = std::move(last_path_);
  std::string bytes = std::move(bytes_);
  bytes_.clear();
  last_path_.clear();
  open_entries_ = 0;
  refs_.push_back(ref);
  return sink_ ? sink_(ref, std::move(bytes)) : Status::Ok();
}

Result<ManifestIndex> BuildIndex(const Manifest& manifest, const ChunkSink& sink) {
  Chunker chunker(sink);
  for (const auto& [path, entry] : manifest.entries()) MC_RETURN_IF_ERROR(chunker.Add(entry));
  MC_RETURN_IF_ERROR(chunker.Finish());
  ManifestIndex index;
  index.refs = chunker.refs();
  return index;
}

Result<ManifestIndex> ApplyChangesToIndex(const ManifestIndex& old, ChunkSource& source,
                                          const std::vector<v1::Change>& changes,
                                          const ChunkSink& sink) {
  return ApplyChangesImpl(old, source, changes.data(), changes.size(), sink);
}

Result<ManifestIndex> ApplyChangesToIndex(
    const ManifestIndex& old, ChunkSource& source,
    const google::protobuf::RepeatedPtrField<v1::Change>& changes, const ChunkSink& sink) {
  const std::vector<v1::Change> list(changes.begin(), changes.end());
  return ApplyChangesImpl(old, source, list.data(), list.size(), sink);
}

Status DiffIndexEntries(const ManifestIndex& from, ChunkSource& from_source,
                        const ManifestIndex& to, ChunkSource& to_source,
                        const EntryPairSink& sink) {
  std::set<std::string> from_ids, to_ids;
  for (const auto& r : from.refs) from_ids.insert(r.id);
  for (const auto& r : to.refs) to_ids.insert(r.id);
  // A chunk in both holds the same entries in both: only the rest can differ.
  ManifestEntryStream a(from, from_source, &to_ids);
  ManifestEntryStream b(to, to_source, &from_ids);
  for (;;) {
    MC_ASSIGN_OR_RETURN(const v1::FileEntry* x, a.Peek());
    MC_ASSIGN_OR_RETURN(const v1::FileEntry* y, b.Peek());
    if (x == nullptr && y == nullptr) return Status::Ok();
    if (y == nullptr || (x != nullptr && x->path() < y->path())) {
      MC_RETURN_IF_ERROR(sink(x, nullptr));
      a.Next();
    } else if (x == nullptr || y->path() < x->path()) {
      MC_RETURN_IF_ERROR(sink(nullptr, y));
      b.Next();
    } else {
      if (!SameEntry(*x, *y)) MC_RETURN_IF_ERROR(sink(x, y));
      a.Next();
      b.Next();
    }
  }
}

Status DiffIndexes(const ManifestIndex& from, ChunkSource& from_source, const ManifestIndex& to,
                   ChunkSource& to_source, const ChangeSink& sink) {
  return DiffIndexEntries(from, from_source, to, to_source,
                          [&](const v1::FileEntry* x, const v1::FileEntry* y) -> Status {
                            v1::Change change;
                            if (y == nullptr) {
                              change.set_kind(v1::CHANGE_DELETED);
                              change.mutable_entry()->set_path(x->path());
                              change.mutable_entry()->set_kind(x->kind());
                            } else if (x == nullptr) {
                              change.set_kind(v1::CHANGE_ADDED);
                              *change.mutable_entry() = *y;
                            } else {
                              change.set_kind(v1::CHANGE_MODIFIED);
                              *change.mutable_entry() = *y;
                              if (x->kind() == v1::ENTRY_FILE)
                                change.set_previous_sha256(x->sha256());
                            }
                            return sink(std::move(change));
                          });
}

Result<const v1::FileEntry*> ManifestEntryStream::Peek() {
  while (pos_ >= buffer_.size()) {
    while (next_ref_ < index_.refs.size() && skip_ != nullptr &&
           skip_->count(index_.refs[next_ref_].id)) {
      ++next_ref_;
    }
    if (next_ref_ >= index_.refs.size()) return static_cast<const v1::FileEntry*>(nullptr);
    const std::string after = next_ref_ == 0 ? "" : index_.refs[next_ref_ - 1].last_path;
    MC_ASSIGN_OR_RETURN(buffer_, LoadChunkEntries(source_, index_.refs[next_ref_], after));
    ++next_ref_;
    pos_ = 0;
  }
  return &buffer_[pos_];
}

Status ForEachEntry(const ManifestIndex& index, ChunkSource& source, const EntrySink& sink) {
  std::string after;
  for (const auto& ref : index.refs) {
    MC_ASSIGN_OR_RETURN(std::vector<v1::FileEntry> entries, LoadChunkEntries(source, ref, after));
    for (auto& e : entries) MC_RETURN_IF_ERROR(sink(std::move(e)));
    after = ref.last_path;
  }
  return Status::Ok();
}

}  // namespace mirrorcast
