#include "broker/manifest_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <set>
#include <system_error>

#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

namespace fs = std::filesystem;

fs::path ManifestStore::ObjectPath(const fs::path& dir, std::string_view sha256) {
  const std::string hex = ToHex(sha256);
  return dir / hex.substr(0, 2) / hex;
}

Result<std::string> ManifestStore::Put(std::string_view bytes, bool* added) {
  std::string id = Sha256Of(bytes);
  const fs::path path = ObjectPath(dir_, id);
  if (added) *added = false;
  std::error_code ec;
  if (fs::exists(path, ec)) return id;
  fs::create_directories(path.parent_path(), ec);
  if (ec) return Status::IoError("create " + path.parent_path().string() + ": " + ec.message());
  const fs::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
    if (!fd.valid()) return Status::FromErrno("create " + tmp.string(), errno);
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::unlink(tmp.c_str());
        return Status::FromErrno("write " + tmp.string(), err);
      }
      done += static_cast<size_t>(n);
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return Status::FromErrno("rename " + path.string(), err);
  }
  if (added) *added = true;
  unsynced_.push_back(path);
  return id;
}

bool ManifestStore::Has(std::string_view sha256) const {
  std::error_code ec;
  return fs::exists(ObjectPath(dir_, sha256), ec);
}

Result<std::string> ManifestStore::Load(std::string_view sha256, size_t max_bytes) {
  const fs::path path = ObjectPath(dir_, sha256);
  auto bytes = ReadFileToString(path, max_bytes);
  if (!bytes.ok()) {
    if (bytes.status().code() == Status::Code::kNotFound || !fs::exists(path)) {
      return Status::NotFound("manifest object " + ToHex(sha256) + " is not stored here");
    }
    return bytes.status();
  }
  if (Sha256Of(*bytes) != sha256) {
    return Status::Corruption("stored manifest object " + ToHex(sha256) +
                              " does not match its SHA-256");
  }
  return bytes;
}

Status ManifestStore::Remove(std::string_view sha256) {
  std::error_code ec;
  fs::remove(ObjectPath(dir_, sha256), ec);
  if (ec) return Status::IoError("remove manifest object: " + ec.message());
  return Status::Ok();
}

Status ManifestStore::Sync(bool everything) {
  // syncfs flushes everything dirty on the filesystem (a tree being written
  // next to the store, say); a few fsyncs are cheaper for a few objects.
  constexpr size_t kFsyncEachUpTo = 64;
  std::vector<fs::path> files;
  files.swap(unsynced_);
  if (everything || files.size() > kFsyncEachUpTo) return SyncFilesystem(dir_);
  if (files.empty()) return Status::Ok();
  std::set<fs::path> dirs;
  for (const auto& f : files) {
    MC_RETURN_IF_ERROR(FsyncPath(f));
    dirs.insert(f.parent_path());
  }
  for (const auto& d : dirs) MC_RETURN_IF_ERROR(FsyncDir(d));
  return FsyncDir(dir_);  // the xx/ directories themselves
}

}  // namespace mirrorcast
