// Fuzzes the manifest decoder (Manifest::Parse) and what a mirror does with a
// parsed manifest: digest, serialize, diff, apply a change list.
//
// The same bytes are also parsed as a RepoChanged whose changes are applied to
// the manifest, so one input can drive both sides of an apply.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto/sha256.h"
#include "core/manifest/manifest.h"
#include "proto/mirrorcast.pb.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

bool SameManifest(const Manifest& a, const Manifest& b) {
  if (a.repo() != b.repo() || a.serial() != b.serial() || a.size() != b.size()) return false;
  auto ia = a.entries().begin();
  for (auto ib = b.entries().begin(); ib != b.entries().end(); ++ia, ++ib) {
    if (ia->first != ib->first || !SameEntry(ia->second, ib->second)) return false;
  }
  return true;
}

google::protobuf::RepeatedPtrField<v1::Change> AsField(std::vector<v1::Change> changes) {
  google::protobuf::RepeatedPtrField<v1::Change> field;
  for (v1::Change& change : changes) *field.Add() = std::move(change);
  return field;
}

// Applies `changes` to a copy of `base`: on success returns true and leaves the
// result in *out; on failure the copy must be unchanged.
bool ApplyToCopy(const Manifest& base,
                 const google::protobuf::RepeatedPtrField<v1::Change>& changes, Manifest* out) {
  *out = base;
  if (out->ApplyChanges(changes).ok()) return true;
  if (!SameManifest(*out, base)) __builtin_trap();  // "leaves *this unchanged on error"
  return false;
}

void CheckParsed(const Manifest& manifest) {
  const std::string digest = manifest.Digest();
  if (digest.size() != kSha256Size) __builtin_trap();

  // Serialize -> Parse is the identity, and the second serialization is stable.
  const std::string serialized = manifest.Serialize();
  auto reparsed = Manifest::Parse(serialized);
  if (!reparsed.ok()) __builtin_trap();
  if (!SameManifest(*reparsed, manifest) || reparsed->Digest() != digest) __builtin_trap();
  if (reparsed->Serialize() != serialized) __builtin_trap();

  // A manifest does not differ from itself.
  if (!DiffManifests(manifest, manifest).empty()) __builtin_trap();

  // From nothing: one ADDED per entry, and applying them rebuilds the manifest.
  const Manifest empty(manifest.repo(), manifest.serial());
  auto added = AsField(DiffManifests(empty, manifest));
  if (added.size() != static_cast<int>(manifest.size())) __builtin_trap();
  Manifest rebuilt;
  if (!ApplyToCopy(empty, added, &rebuilt)) __builtin_trap();
  if (!SameManifest(rebuilt, manifest) || rebuilt.Digest() != digest) __builtin_trap();

  // To nothing: one DELETED per entry, leaving the empty digest.
  auto deleted = AsField(DiffManifests(manifest, empty));
  if (deleted.size() != static_cast<int>(manifest.size())) __builtin_trap();
  Manifest emptied;
  if (!ApplyToCopy(manifest, deleted, &emptied)) __builtin_trap();
  if (emptied.size() != 0 || emptied.Digest() != empty.Digest()) __builtin_trap();
}

// Applies the RepoChanged read from the same bytes; whatever comes out of a
// successful apply is still a manifest that serializes and parses back.
void ApplyEvent(std::string_view bytes, const Manifest& base) {
  v1::RepoChanged event;
  if (!event.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  Manifest applied;
  if (!ApplyToCopy(base, event.changes(), &applied)) return;
  auto reparsed = Manifest::Parse(applied.Serialize());
  if (!reparsed.ok() || reparsed->Digest() != applied.Digest()) __builtin_trap();
  // Diffing back and forth reproduces both ends.
  Manifest back;
  if (!ApplyToCopy(applied, AsField(DiffManifests(applied, base)), &back)) __builtin_trap();
  if (back.Digest() != base.Digest()) __builtin_trap();
}

v1::FileEntry File(const std::string& path, const std::string& content, int64_t mtime) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_FILE);
  e.set_size(content.size());
  e.set_sha256(Sha256Of(content));
  e.set_mode(0644);
  e.set_mtime(mtime);
  return e;
}

v1::FileEntry Dir(const std::string& path) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_DIRECTORY);
  e.set_mode(0755);
  return e;
}

v1::FileEntry Link(const std::string& path, const std::string& target) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_SYMLINK);
  e.set_mode(0777);
  e.set_symlink_target(target);
  return e;
}

Manifest SampleManifest() {
  Manifest m("debian-main", 7);
  m.Put(Dir("dists"));
  m.Put(Dir("dists/stable"));
  m.Put(File("dists/stable/Release", "release", 1'700'000'000));
  m.Put(Link("dists/current", "stable"));
  m.Put(Dir("pool"));
  m.Put(File("pool/a.deb", "a", 1'700'000'001));
  m.Put(File("pool/\xc3\xa9t\xc3\xa9.deb", "utf-8 name", 1'700'000'002));
  m.Put(Link("pool/latest", "../dists/stable/Release"));
  return m;
}

}  // namespace

std::vector<std::string> ManifestSeeds() {
  std::vector<std::string> seeds;
  const Manifest sample = SampleManifest();
  seeds.push_back(sample.Serialize());
  seeds.push_back(Manifest("empty", 0).Serialize());
  // A RepoChanged that applies cleanly to the sample: its changes are the
  // bytes' second reading.
  Manifest next = sample;
  next.Put(File("pool/b.deb", "b", 1'700'000'100));
  next.Put(File("pool/a.deb", "a2", 1'700'000'101));
  next.Erase("dists/current");
  v1::RepoChanged event;
  event.set_repo("debian-main");
  event.set_serial(8);
  event.set_previous_serial(7);
  event.set_manifest_sha256(next.Digest());
  for (v1::Change& change : DiffManifests(sample, next)) *event.add_changes() = std::move(change);
  seeds.push_back(event.SerializeAsString());
  // An event that adds into an empty manifest.
  v1::RepoChanged fresh;
  for (v1::Change& change : DiffManifests(Manifest(), sample)) {
    *fresh.add_changes() = std::move(change);
  }
  seeds.push_back(fresh.SerializeAsString());
  // Both readings at once: a Manifest skips RepoChanged's field 8 (changes) as
  // unknown, and a RepoChanged skips the Manifest fields of other wire types.
  v1::RepoChanged changes_only;
  *changes_only.mutable_changes() = event.changes();
  seeds.push_back(sample.Serialize() + changes_only.SerializeAsString());
  return seeds;
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast;
  using namespace mirrorcast::fuzz;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto parsed = Manifest::Parse(bytes);
  if (parsed.ok()) {
    CheckParsed(*parsed);
    ApplyEvent(bytes, *parsed);
  } else {
    ApplyEvent(bytes, Manifest());
  }
  return 0;
}
