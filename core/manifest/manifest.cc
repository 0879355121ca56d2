#include "core/manifest/manifest.h"

#include <climits>
#include <optional>

#include "core/crypto/sha256.h"
#include "core/fs/path.h"
#include "core/manifest/chunks.h"

namespace mirrorcast {
namespace {

// The manifest format version this code writes and reads (the protocol
// version of proto/mirrorcast.proto). Kept here rather than taken from
// core/wire so the manifest library does not depend on the envelope code.
constexpr uint32_t kManifestProtocolVersion = 1;

}  // namespace

const v1::FileEntry* Manifest::Find(std::string_view path) const {
  auto it = entries_.find(path);
  return it == entries_.end() ? nullptr : &it->second;
}

void Manifest::Put(v1::FileEntry entry) {
  std::string key = entry.path();
  entries_.insert_or_assign(std::move(key), std::move(entry));
}

void Manifest::Erase(std::string_view path) {
  auto it = entries_.find(path);
  if (it != entries_.end()) entries_.erase(it);
}

std::string Manifest::Digest() const {
  // Entries are valid and sorted here, so building cannot fail.
  Result<ManifestIndex> index = BuildIndex(*this, nullptr);
  return index.ok() ? index->Root() : std::string();
}

v1::Manifest Manifest::ToProto() const {
  v1::Manifest proto;
  proto.set_protocol_version(kManifestProtocolVersion);
  proto.set_repo(repo_);
  proto.set_serial(serial_);
  proto.mutable_entries()->Reserve(static_cast<int>(entries_.size()));
  for (const auto& [path, entry] : entries_) *proto.add_entries() = entry;
  return proto;
}

std::string Manifest::Serialize() const {
  std::string out;
  ToProto().SerializeToString(&out);
  return out;
}

Result<Manifest> Manifest::FromProto(const v1::Manifest& proto) {
  if (proto.protocol_version() != kManifestProtocolVersion) {
    return Status::InvalidArgument("manifest protocol version " +
                                   std::to_string(proto.protocol_version()) + " is not supported");
  }
  Manifest manifest(proto.repo(), proto.serial());
  const std::string* previous = nullptr;
  for (int i = 0; i < proto.entries_size(); ++i) {
    const v1::FileEntry& entry = proto.entries(i);
    Status status = CheckEntry(entry);
    if (!status.ok()) return status.WithContext("manifest entry " + std::to_string(i));
    if (previous != nullptr && !(*previous < entry.path())) {
      return Status::InvalidArgument(
          "manifest entry " + std::to_string(i) +
          (*previous == entry.path() ? " duplicates " : " is out of order after ") +
          "the previous path");
    }
    previous = &entry.path();
    // Input is strictly increasing, so every insert goes at the end.
    manifest.entries_.emplace_hint(manifest.entries_.end(), entry.path(), entry);
  }
  return manifest;
}

Result<Manifest> Manifest::Parse(std::string_view bytes) {
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return Status::ResourceExhausted("manifest of " + std::to_string(bytes.size()) +
                                     " bytes is too large to parse");
  }
  v1::Manifest proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return Status::Corruption("manifest bytes are not a valid protobuf Manifest");
  }
  return FromProto(proto);
}

Status Manifest::ApplyChanges(const google::protobuf::RepeatedPtrField<v1::Change>& changes) {
  // Pending state of every path the change list touches: an entry, or
  // nullopt for "deleted". Nothing in entries_ moves until all changes
  // have been checked against the state the earlier ones leave behind.
  std::map<std::string, std::optional<v1::FileEntry>, std::less<>> pending;
  auto current = [&](const std::string& path) -> const v1::FileEntry* {
    auto it = pending.find(path);
    if (it != pending.end()) return it->second ? &*it->second : nullptr;
    return Find(path);
  };

  for (int i = 0; i < changes.size(); ++i) {
    const v1::Change& change = changes.Get(i);
    const v1::FileEntry& entry = change.entry();
    auto where = [&]() {
      return "change " + std::to_string(i) + " (" + ChangeKindName(change.kind()) + ")";
    };
    Status path_ok = ValidateRelativePath(entry.path());
    if (!path_ok.ok()) return path_ok.WithContext(where());
    if (entry.kind() != v1::ENTRY_FILE && entry.kind() != v1::ENTRY_SYMLINK &&
        entry.kind() != v1::ENTRY_DIRECTORY) {
      return Status::InvalidArgument(where() + ": entry kind not set for " + entry.path());
    }
    const v1::FileEntry* existing = current(entry.path());

    switch (change.kind()) {
      case v1::CHANGE_ADDED: {
        Status ok = CheckEntry(entry);
        if (!ok.ok()) return ok.WithContext(where());
        if (existing != nullptr) {
          return Status::FailedPrecondition(where() + ": " + entry.path() + " already exists");
        }
        pending.insert_or_assign(entry.path(), entry);
        break;
      }
      case v1::CHANGE_MODIFIED: {
        Status ok = CheckEntry(entry);
        if (!ok.ok()) return ok.WithContext(where());
        if (existing == nullptr) {
          return Status::FailedPrecondition(where() + ": " + entry.path() + " does not exist");
        }
        if (!change.previous_sha256().empty() && change.previous_sha256() != existing->sha256()) {
          return Status::FailedPrecondition(where() + ": " + entry.path() +
                                            " does not have the content the change replaces");
        }
        pending.insert_or_assign(entry.path(), entry);
        break;
      }
      case v1::CHANGE_DELETED: {
        if (existing == nullptr) {
          return Status::FailedPrecondition(where() + ": " + entry.path() + " does not exist");
        }
        if (existing->kind() != entry.kind()) {
          return Status::FailedPrecondition(where() + ": " + entry.path() +
                                            " is not of the kind the change deletes");
        }
        pending.insert_or_assign(entry.path(), std::nullopt);
        break;
      }
      default:
        return Status::InvalidArgument(where() + ": unknown change kind " +
                                       std::to_string(static_cast<int>(change.kind())));
    }
  }

  for (auto& [path, entry] : pending) {
    if (entry) {
      entries_.insert_or_assign(path, std::move(*entry));
    } else {
      Erase(path);
    }
  }
  return Status::Ok();
}

Status CheckEntry(const v1::FileEntry& entry) {
  MC_RETURN_IF_ERROR(ValidateRelativePath(entry.path()));
  const std::string& path = entry.path();
  if (entry.mode() > 07777) {
    return Status::InvalidArgument(path + ": mode " + std::to_string(entry.mode()) +
                                   " has bits outside 07777");
  }
  switch (entry.kind()) {
    case v1::ENTRY_FILE:
      if (entry.sha256().size() != kSha256Size) {
        return Status::InvalidArgument(path + ": a file needs a 32-byte sha256");
      }
      if (!entry.symlink_target().empty()) {
        return Status::InvalidArgument(path + ": a file has no symlink target");
      }
      return Status::Ok();
    case v1::ENTRY_SYMLINK:
    case v1::ENTRY_DIRECTORY:
      // One encoding per tree state: fields that do not apply to the kind
      // must be empty, or two manifests of the same tree would differ.
      if (!entry.sha256().empty())
        return Status::InvalidArgument(path + ": only files have a sha256");
      if (entry.size() != 0) return Status::InvalidArgument(path + ": only files have a size");
      if (entry.mtime() != 0) return Status::InvalidArgument(path + ": only files have an mtime");
      if (entry.kind() == v1::ENTRY_DIRECTORY) {
        if (!entry.symlink_target().empty()) {
          return Status::InvalidArgument(path + ": a directory has no symlink target");
        }
        return Status::Ok();
      }
      return ValidateSymlinkTarget(path, entry.symlink_target());
    default:
      return Status::InvalidArgument(path + ": unknown entry kind " +
                                     std::to_string(static_cast<int>(entry.kind())));
  }
}

const char* ChangeKindName(v1::ChangeKind kind) {
  switch (kind) {
    case v1::CHANGE_ADDED:
      return "added";
    case v1::CHANGE_MODIFIED:
      return "modified";
    case v1::CHANGE_DELETED:
      return "deleted";
    default:
      return "unknown";
  }
}

bool SameEntry(const v1::FileEntry& a, const v1::FileEntry& b) {
  return a.path() == b.path() && a.kind() == b.kind() && a.size() == b.size() &&
         a.sha256() == b.sha256() && a.mode() == b.mode() && a.mtime() == b.mtime() &&
         a.symlink_target() == b.symlink_target();
}

std::vector<v1::Change> DiffManifests(const Manifest& from, const Manifest& to) {
  std::vector<v1::Change> changes;
  auto a = from.entries().begin();
  auto b = to.entries().begin();
  const auto a_end = from.entries().end();
  const auto b_end = to.entries().end();
  while (a != a_end || b != b_end) {
    v1::Change change;
    if (b == b_end || (a != a_end && a->first < b->first)) {
      change.set_kind(v1::CHANGE_DELETED);
      change.mutable_entry()->set_path(a->first);
      change.mutable_entry()->set_kind(a->second.kind());
      ++a;
    } else if (a == a_end || b->first < a->first) {
      change.set_kind(v1::CHANGE_ADDED);
      *change.mutable_entry() = b->second;
      ++b;
    } else {
      const v1::FileEntry& old_entry = a->second;
      const v1::FileEntry& new_entry = b->second;
      ++a;
      ++b;
      if (SameEntry(old_entry, new_entry)) continue;
      change.set_kind(v1::CHANGE_MODIFIED);
      *change.mutable_entry() = new_entry;
      if (old_entry.kind() == v1::ENTRY_FILE) change.set_previous_sha256(old_entry.sha256());
    }
    changes.push_back(std::move(change));
  }
  return changes;
}

}  // namespace mirrorcast
