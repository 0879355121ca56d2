// Fuzzes the format-v2 manifest decoders a mirror and a broker run on bytes
// from a peer: DecodeChunk (a chunk fetched by id) and ManifestIndex::Decode
// (an index fetched by its signed root), and what follows a decode: the
// index re-encodes to the same bytes, a decoded chunk re-chunks to itself,
// and a change list parsed from the same bytes either applies to the chunk's
// manifest with the same root as a rebuild from scratch, or is refused.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto/sha256.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "proto/mirrorcast.pb.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

void CheckIndex(std::string_view bytes) {
  auto index = ManifestIndex::Decode(bytes);
  if (!index.ok()) return;
  if (index->Encode() != bytes) __builtin_trap();  // canonical: one encoding
  if (index->Root() != Sha256Of(bytes)) __builtin_trap();
  if (!index->refs.empty()) {
    const size_t at = index->Locate(index->refs.back().last_path);
    if (at != index->refs.size() - 1) __builtin_trap();
  }
}

void CheckChunk(std::string_view bytes) {
  auto entries = DecodeChunk(bytes);
  if (!entries.ok() || entries->empty()) return;
  Manifest manifest("fuzz", 1);
  for (const auto& e : *entries) manifest.Put(e);
  MemoryChunks store;
  auto keep = [&](const ChunkRef& ref, std::string b) {
    store.Put(ref.id, std::move(b));
    return Status::Ok();
  };
  auto index = BuildIndex(manifest, keep);
  if (!index.ok()) __builtin_trap();  // decoded entries are always valid
  if (index->entries() != entries->size()) __builtin_trap();

  // The same bytes as a change list: applying it must agree with a rebuild.
  v1::RepoChanged event;
  if (!event.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  auto applied = ApplyChangesToIndex(*index, store, event.changes(), keep);
  Manifest expected = manifest;
  const bool ok = expected.ApplyChanges(event.changes()).ok();
  if (!applied.ok()) return;  // stricter than Manifest (order) is fine
  if (!ok) __builtin_trap();  // accepted something Manifest refuses
  auto rebuilt = BuildIndex(expected, nullptr);
  if (!rebuilt.ok() || rebuilt->Root() != applied->Root()) __builtin_trap();
}

}  // namespace

std::vector<std::string> ChunksSeeds() {
  std::vector<std::string> seeds;
  Manifest m("fuzz", 1);
  v1::FileEntry dir;
  dir.set_path("repodata");
  dir.set_kind(v1::ENTRY_DIRECTORY);
  dir.set_mode(0755);
  m.Put(dir);
  for (int i = 0; i < 8; ++i) {
    v1::FileEntry f;
    f.set_path("repodata/file-" + std::to_string(i));
    f.set_kind(v1::ENTRY_FILE);
    f.set_size(static_cast<uint64_t>(i) * 100);
    f.set_sha256(Sha256Of(std::to_string(i)));
    f.set_mode(0644);
    f.set_mtime(1700000000 + i);
    m.Put(f);
  }
  std::string chunk;
  for (const auto& [path, e] : m.entries()) AppendEntryRecord(&chunk, e);
  seeds.push_back(chunk);
  auto index = BuildIndex(m, nullptr);
  if (index.ok()) seeds.push_back(index->Encode());
  seeds.push_back(ManifestIndex{}.Encode());
  return seeds;
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  mirrorcast::fuzz::CheckIndex(bytes);
  mirrorcast::fuzz::CheckChunk(bytes);
  return 0;
}
