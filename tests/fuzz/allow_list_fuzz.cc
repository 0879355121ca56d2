// Fuzzes the broker's allow-list parser (AllowList::Parse): a file an
// operator writes, reloaded on SIGHUP, so any text must give either a list
// or a line-numbered error, never a crash. Key file names resolve through a
// reader that knows one name, so the file branch is covered without disk.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/net/allow_list.h"
#include "core/net/curve.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

// The Z85 of 32 bytes of 0x01..0x20 and of 32 zero bytes.
constexpr std::string_view kKeyA = "0rJua1Qkhq2)}4G4gS)W5Ft->6=4P585:Cl9uDpB";
constexpr std::string_view kKeyB = "0000000000000000000000000000000000000000";

Result<std::string> ReadKnownFile(const std::filesystem::path& file) {
  if (file.filename() == "m.curve.pub") return std::string(kKeyB);
  return Status::NotFound("no such key file");
}

}  // namespace

std::vector<std::string> AllowListSeeds() {
  return {
      "# roles: publish, mirror, relay, admin\n"
      "publish release " +
          std::string(kKeyA) +
          "\n"
          "\n"
          "mirror mirror-a m.curve.pub\n",
      "admin ops@example.org:1 " + std::string(kKeyA) + "\r\n   # indented comment\n",
      "relay tier1.eu " + std::string(kKeyA) + "\nmirror m " + std::string(kKeyA) + "\n",
      "mirror bad/name " + std::string(kKeyA) + "\n",
  };
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto list = AllowList::Parse(text, "fuzz.allow", "/nonexistent", &fuzz::ReadKnownFile);
  if (!list.ok()) {
    // Errors name the source and a line.
    if (list.status().message().rfind("fuzz.allow:", 0) != 0) __builtin_trap();
    return 0;
  }
  // Every entry has a valid identity whose User-Id reads back as itself, and
  // a listed key finds its entry.
  size_t lines = 1;
  for (char c : text) lines += c == '\n';
  if (list->size() > lines) __builtin_trap();
  for (std::string_view key : {fuzz::kKeyA, fuzz::kKeyB}) {
    const AllowList::Entry* entry = list->Find(key);
    if (entry == nullptr) continue;
    const auto back = ParseUserId(ToUserId(entry->identity));
    if (!back || back->name != entry->identity.name || back->role != entry->identity.role ||
        back->public_z85 != key || !ValidPeerName(entry->identity.name) || entry->line < 1 ||
        static_cast<size_t>(entry->line) > lines) {
      __builtin_trap();
    }
  }
  // The User-Id reader on the bare bytes.
  if (auto identity = ParseUserId(text)) {
    if (ToUserId(*identity) != text) __builtin_trap();
  }
  return 0;
}
