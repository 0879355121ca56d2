// Fuzzes the librsync wrappers with peer-controlled bytes: a delta signature
// (CheckSignature, ComputeDelta; the broker's side of a DeltaRequest) and a
// delta file (ApplyDelta; the subscriber's side of a delta download).
//
// Files live in the process's scratch directory: two small fixed files (the
// basis a mirror holds, the new version the broker serves) and the outputs.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "core/delta/delta.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"
#include "tests/fuzz/scratch_dir.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

constexpr uint64_t kMaxOutput = 1u << 20;   // the signed size a mirror would pass
constexpr uint64_t kSmallMaxOutput = 1000;  // below the rebuilt file's size

struct Files {
  std::filesystem::path basis;     // what the mirror has
  std::filesystem::path new_file;  // what the broker serves
  std::filesystem::path delta_in;  // the fuzzer's bytes as a delta
  std::filesystem::path delta_out;
  std::filesystem::path patched;
};

// Deterministic content with repeats, so deltas copy some blocks and send
// others as literals.
std::string Content(uint32_t seed, size_t size) {
  std::string out(size, '\0');
  uint32_t x = seed;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1664525u + 1013904223u;
    out[i] = static_cast<char>((i % 1024 < 700) ? (x >> 24) : ('a' + (i % 26)));
  }
  return out;
}

const Files& FixedFiles() {
  static const Files files = [] {
    Files f;
    f.basis = Scratch() / "basis";
    f.new_file = Scratch() / "new";
    f.delta_in = Scratch() / "delta-in";
    f.delta_out = Scratch() / "delta-out";
    f.patched = Scratch() / "patched";
    const std::string basis = Content(1, 8192);
    std::string next = basis.substr(0, 3000) + Content(2, 500) + basis.substr(3000);
    next.resize(next.size() - 700);
    WriteScratchFile(f.basis, basis);
    WriteScratchFile(f.new_file, next);
    return f;
  }();
  return files;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// ApplyDelta either succeeds within its limit or fails and leaves no output.
void ApplyWithin(const std::filesystem::path& delta, uint64_t max_output) {
  const Files& f = FixedFiles();
  const Status st = ApplyDelta(f.basis, delta, f.patched, max_output);
  std::error_code ec;
  const bool exists = std::filesystem::exists(f.patched, ec);
  if (st.ok()) {
    const uintmax_t size = std::filesystem::file_size(f.patched, ec);
    if (ec || size > max_output) __builtin_trap();
  } else if (exists) {
    __builtin_trap();  // a failed patch must not leave a half-built file
  }
  std::filesystem::remove(f.patched, ec);
}

}  // namespace

std::vector<std::string> DeltaSeeds() {
  const Files& f = FixedFiles();
  std::vector<std::string> seeds;
  auto basis_sig = ComputeSignature(f.basis);
  auto new_sig = ComputeSignature(f.new_file);
  if (!basis_sig.ok() || !new_sig.ok()) __builtin_trap();
  seeds.push_back(*basis_sig);
  seeds.push_back(*new_sig);
  // The delta a broker would send for this basis, as a delta-file seed.
  if (!ComputeDelta(*basis_sig, f.new_file, f.delta_out, nullptr).ok()) __builtin_trap();
  seeds.push_back(ReadFile(f.delta_out));
  // An MD4 signature header (refused) with one block record.
  std::string md4("rs\x01\x36\x00\x00\x01\x00\x00\x00\x00\x08", 12);
  md4.append(12, '\x11');
  seeds.push_back(md4);
  // Hostile shapes: 1-byte strong sums; one weak sum with 20 strong sums.
  std::string tiny("rs\x01\x47\x00\x00\x01\x00\x00\x00\x00\x01", 12);
  for (int i = 0; i < 64; ++i) tiny.append({'\x01', '\x02', '\x03', static_cast<char>(i), 'x'});
  seeds.push_back(tiny);
  std::string collide("rs\x01\x47\x00\x00\x01\x00\x00\x00\x00\x08", 12);
  for (int i = 0; i < 20; ++i) {
    collide.append("\x0a\x0b\x0c\x0d", 4);
    collide.append(8, static_cast<char>(i));
  }
  seeds.push_back(collide);
  return seeds;
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast;
  using namespace mirrorcast::fuzz;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const Files& f = FixedFiles();

  // As a signature.
  // The broker's check before any work, against the file the delta is made of.
  std::error_code ec;
  const uint64_t new_size = std::filesystem::file_size(f.new_file, ec);
  const auto checked = CheckSignatureFor(bytes, new_size);
  if (checked.ok()) {
    // What the check accepts stays within the bounds it documents.
    if (checked->strong_len < kMinSignatureStrongLen ||
        checked->block_len < kMinSignatureBlockLen ||
        size > MaxSignatureBytes(new_size, checked->block_len, checked->strong_len)) {
      __builtin_trap();
    }
  }
  DeltaStats stats;
  const Status computed = ComputeDelta(bytes, f.new_file, f.delta_out, &stats);
  if (!checked.ok() && computed.ok()) {
    __builtin_trap();  // ComputeDelta used a signature CheckSignatureFor refuses
  }
  if (computed.ok()) {
    // Whatever the signature, the delta it yields is a valid delta file.
    ApplyWithin(f.delta_out, kMaxOutput);
  }

  // As a delta file.
  WriteScratchFile(f.delta_in, bytes);
  ApplyWithin(f.delta_in, kMaxOutput);
  ApplyWithin(f.delta_in, kSmallMaxOutput);
  return 0;
}
