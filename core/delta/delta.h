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

// Refuses anything but a well-formed RS_RK_BLAKE2 signature header, and
// signatures larger than `max_bytes`.
Status CheckSignature(std::string_view signature, size_t max_bytes);

// Writes the delta that turns the signature's basis into `new_file` to
// `delta_out` (created/truncated).
Status ComputeDelta(std::string_view signature, const std::filesystem::path& new_file,
                    const std::filesystem::path& delta_out, DeltaStats* stats);

// Applies `delta` to `basis` (seekable), writing `out` (created/truncated).
// Stops with ResourceExhausted once `out` would exceed `max_output_bytes`
// (the signed size of the file being rebuilt). With `output_sha256`, also
// returns the SHA-256 of what it wrote, so the caller need not read it back.
Status ApplyDelta(const std::filesystem::path& basis, const std::filesystem::path& delta,
                  const std::filesystem::path& out, uint64_t max_output_bytes,
                  std::string* output_sha256 = nullptr);

}  // namespace mirrorcast
