#include "core/manifest/hash_cache.h"

#include "core/base/log.h"
#include "core/crypto/sha256.h"

namespace mirrorcast {
namespace {

// Nanosecond timestamps: a rewrite within the same second keeps st_mtime but
// not st_mtim.tv_nsec on every filesystem that matters (ext4, xfs, btrfs).
int64_t Nanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + static_cast<int64_t>(ts.tv_nsec);
}

constexpr std::string_view kSchema =
    "CREATE TABLE IF NOT EXISTS hashes("
    "  path TEXT PRIMARY KEY,"
    "  size INTEGER NOT NULL,"
    "  mtime_ns INTEGER NOT NULL,"
    "  ctime_ns INTEGER NOT NULL,"
    "  ino INTEGER NOT NULL,"
    "  sha256 BLOB NOT NULL"
    ") WITHOUT ROWID";

}  // namespace

Result<std::unique_ptr<HashCache>> HashCache::Open(const std::filesystem::path& db_path) {
  MC_ASSIGN_OR_RETURN(std::unique_ptr<Database> db, Database::Open(db_path));
  MC_RETURN_IF_ERROR(db->Exec(kSchema));
  // A cache that loses its last writes to a power cut only costs re-hashing
  // (WAL stays consistent): no fsync on every commit.
  MC_RETURN_IF_ERROR(db->Exec("PRAGMA synchronous=NORMAL"));
  std::unique_ptr<HashCache> cache(new HashCache(std::move(db), db_path));
  MC_ASSIGN_OR_RETURN(Statement lookup,
                      cache->db_->Prepare("SELECT size, mtime_ns, ctime_ns, ino, sha256 "
                                          "FROM hashes WHERE path = ?"));
  cache->lookup_.emplace(std::move(lookup));
  MC_ASSIGN_OR_RETURN(Statement store,
                      cache->db_->Prepare("INSERT OR REPLACE INTO hashes"
                                          "(path, size, mtime_ns, ctime_ns, ino, sha256) "
                                          "VALUES (?, ?, ?, ?, ?, ?)"));
  cache->store_.emplace(std::move(store));
  return cache;
}

std::optional<std::string> HashCache::Lookup(std::string_view path, const struct stat& st) {
  Statement& q = *lookup_;
  q.Reset();
  q.Bind(1, path);
  Result<bool> row = q.Step();
  std::optional<std::string> digest;
  if (!row.ok()) {
    // A cache that cannot be read only costs a re-hash.
    MC_LOG(warning) << "hash cache lookup failed path=" << path << ": " << row.status().ToString();
  } else if (*row && q.ColumnInt(0) == static_cast<int64_t>(st.st_size) &&
             q.ColumnInt(1) == Nanos(st.st_mtim) && q.ColumnInt(2) == Nanos(st.st_ctim) &&
             q.ColumnInt(3) == static_cast<int64_t>(st.st_ino)) {
    std::string sha = q.ColumnBlob(4);
    if (sha.size() == kSha256Size) digest = std::move(sha);
  }
  // Reset now so the statement does not keep a read snapshot open.
  q.Reset();
  return digest;
}

Status HashCache::Store(std::string_view path, const struct stat& st, std::string_view sha256) {
  if (sha256.size() != kSha256Size) {
    return Status::InvalidArgument("hash cache: digest for " + std::string(path) +
                                   " is not 32 bytes");
  }
  Statement& q = *store_;
  q.Reset();
  q.Bind(1, path)
      .Bind(2, static_cast<int64_t>(st.st_size))
      .Bind(3, Nanos(st.st_mtim))
      .Bind(4, Nanos(st.st_ctim))
      .Bind(5, static_cast<int64_t>(st.st_ino))
      .BindBlob(6, sha256);
  Status status = q.Run();
  q.Reset();
  return status;
}

Result<std::unique_ptr<HashCache::OrderedReader>> HashCache::OpenOrderedReader() const {
  MC_ASSIGN_OR_RETURN(std::unique_ptr<Database> db, Database::Open(path_));
  std::unique_ptr<OrderedReader> reader(new OrderedReader(std::move(db)));
  MC_ASSIGN_OR_RETURN(Statement scan,
                      reader->db_->Prepare("SELECT path, size, mtime_ns, ctime_ns, ino, sha256 "
                                           "FROM hashes ORDER BY path"));
  reader->scan_.emplace(std::move(scan));
  return reader;
}

std::optional<std::string> HashCache::OrderedReader::Lookup(std::string_view path,
                                                            const struct stat& st) {
  Statement& q = *scan_;
  for (;;) {
    if (!has_row_) {
      if (done_) return std::nullopt;
      Result<bool> row = q.Step();
      if (!row.ok() || !*row) {
        if (!row.ok()) MC_LOG(warning) << "hash cache scan failed: " << row.status().ToString();
        done_ = true;
        return std::nullopt;
      }
      has_row_ = true;
    }
    const std::string at = q.ColumnText(0);
    if (at < path) {
      has_row_ = false;  // a path no longer in the tree
      continue;
    }
    if (at > path) return std::nullopt;  // not cached; the row waits for its path
    has_row_ = false;
    if (q.ColumnInt(1) == static_cast<int64_t>(st.st_size) && q.ColumnInt(2) == Nanos(st.st_mtim) &&
        q.ColumnInt(3) == Nanos(st.st_ctim) && q.ColumnInt(4) == static_cast<int64_t>(st.st_ino)) {
      std::string sha = q.ColumnBlob(5);
      if (sha.size() == kSha256Size) return sha;
    }
    return std::nullopt;
  }
}

Status HashCache::Begin() { return db_->Begin(); }

Status HashCache::Commit() { return db_->Commit(); }

}  // namespace mirrorcast
