// Persistent SHA-256 cache keyed by path and stat identity (size, mtime in ns,
// ctime in ns, inode), stored in SQLite. A file whose identity did not change
// is never read again; any change of identity invalidates the entry.
//
// Belongs to one thread. Batch writes inside Begin()/Commit() for speed.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/base/status.h"
#include "core/store/sqlite.h"

namespace mirrorcast {

class HashCache {
 public:
  static Result<std::unique_ptr<HashCache>> Open(const std::filesystem::path& db_path);

  // The cached digest when `st` matches what was stored for `path`.
  std::optional<std::string> Lookup(std::string_view path, const struct stat& st);
  Status Store(std::string_view path, const struct stat& st, std::string_view sha256);

  Status Begin();
  Status Commit();

  // Lookups in increasing path order over a connection of its own, reading
  // the cache as one forward scan (a full tree scan asks about every path
  // in order: one cursor step each instead of an index search each). Writes
  // through Store() on the cache are not seen by an open reader.
  class OrderedReader {
   public:
    std::optional<std::string> Lookup(std::string_view path, const struct stat& st);

   private:
    friend class HashCache;
    explicit OrderedReader(std::unique_ptr<Database> db) : db_(std::move(db)) {}
    std::unique_ptr<Database> db_;
    std::optional<Statement> scan_;
    bool has_row_ = false;
    bool done_ = false;
  };
  Result<std::unique_ptr<OrderedReader>> OpenOrderedReader() const;

 private:
  HashCache(std::unique_ptr<Database> db, std::filesystem::path path)
      : db_(std::move(db)), path_(std::move(path)) {}
  std::unique_ptr<Database> db_;
  std::filesystem::path path_;
  std::optional<Statement> lookup_;
  std::optional<Statement> store_;
};

}  // namespace mirrorcast
