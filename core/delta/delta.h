// librsync deltas, streamed through files so a 4 GiB file is never loaded.
//
// Signatures use RS_RK_BLAKE2_SIG_MAGIC with block and strong-sum sizes from
// rs_sig_args. A signature with any other magic (MD4 above all) is refused:
// MD4 collisions would let a peer forge matching blocks.
// librsync's own trace output is routed to our log (never raw stderr).
// All functions are thread-safe (no shared state).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

struct DeltaStats {
  uint64_t literal_bytes = 0;  // bytes sent as new data
  uint64_t copied_bytes = 0;   // bytes the delta takes from the basis
  uint64_t delta_bytes = 0;    // size of the delta itself
};

// The signature of `basis` (held in memory: about 1% of the file or less).
Result<std::string> ComputeSignature(const std::filesystem::path& basis);

// What a signature header says (the 12 bytes before the block records).
struct SignatureShape {
  uint32_t block_len = 0;
  uint32_t strong_len = 0;
  uint64_t blocks = 0;  // block records that follow the header
};

// Signatures are peer input and cost the delta's maker memory and CPU in
// proportion to their size, so the bounds below are checked before any
// librsync call. The basis a signature describes may be up to this many
// times larger than the file the delta is made of; a larger one gains
// little from a delta and gets a whole-file fetch instead.
inline constexpr uint64_t kMaxBasisToFileRatio = 2;
// Whatever the file's size, a signature of this many bytes is allowed (it
// costs nothing worth counting; small files keep their deltas).
inline constexpr uint64_t kSignatureBytesAllowance = 64u << 10;
inline constexpr uint32_t kMinSignatureStrongLen = 8;   // bytes; a shorter sum collides
inline constexpr uint32_t kMinSignatureBlockLen = 256;  // rs_sig_args never picks less
inline constexpr uint32_t kMaxSignatureBlockLen = 16u << 20;
// Block records may share a weak sum (identical blocks share the whole
// record and count once), but not with more than this many different strong
// sums: each position of the file whose rolling sum hits such a weak sum is
// compared with all of them, which a hostile signature would turn into
// file size x records comparisons.
inline constexpr uint64_t kMaxStrongSumsPerWeakSum = 16;

// Parses the header only: refuses anything but RS_RK_BLAKE2_SIG_MAGIC (MD4
// above all), a strong sum outside [kMinSignatureStrongLen, 32], a block
// length outside [kMinSignatureBlockLen, kMaxSignatureBlockLen], a body that
// is not whole records, and signatures larger than `max_bytes`.
Result<SignatureShape> CheckSignature(std::string_view signature, size_t max_bytes);

// The largest signature of a basis of up to kMaxBasisToFileRatio x
// `file_size` bytes with this block and strong-sum length, and at least
// kSignatureBytesAllowance.
uint64_t MaxSignatureBytes(uint64_t file_size, uint32_t block_len, uint32_t strong_len);

// CheckSignature, then: no larger than MaxSignatureBytes(file_size, ...) for
// its own block and strong-sum length, and no weak sum shared by more than
// kMaxStrongSumsPerWeakSum different records (a linear scan of the records,
// no librsync state). Everything a delta maker must know before it starts.
Result<SignatureShape> CheckSignatureFor(std::string_view signature, uint64_t file_size);

// Bounds on one delta computation.
struct DeltaLimits {
  // ResourceExhausted once the delta would be larger (it is removed).
  uint64_t max_delta_bytes = UINT64_MAX;
  // Polled between blocks of input; true aborts with Unavailable.
  std::function<bool()> should_stop;
};

// Writes the delta that turns the signature's basis into `new_file` to
// `delta_out` (created/truncated). The signature is checked with
// CheckSignatureFor against `new_file`'s size first. On any failure no
// `delta_out` is left behind.
Status ComputeDelta(std::string_view signature, const std::filesystem::path& new_file,
                    const std::filesystem::path& delta_out, DeltaStats* stats,
                    const DeltaLimits& limits = {});

// Applies `delta` to `basis` (seekable), writing `out` (created/truncated).
// Stops with ResourceExhausted once `out` would exceed `max_output_bytes`
// (the signed size of the file being rebuilt). With `output_sha256`, also
// returns the SHA-256 of what it wrote, so the caller need not read it back.
Status ApplyDelta(const std::filesystem::path& basis, const std::filesystem::path& delta,
                  const std::filesystem::path& out, uint64_t max_output_bytes,
                  std::string* output_sha256 = nullptr);

}  // namespace mirrorcast
