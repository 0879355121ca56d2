// Client side of a broker's content socket (DEALER -> ROUTER): whole files
// and manifest objects in chunks, and librsync deltas.
//
// Flow control is credit-based: at most `credit` requests are in flight across
// all files being fetched, so many small files pipeline and one large file
// streams without ever buffering more than credit * chunk bytes. Small files
// travel several to a request (RangesRequest: at most kMaxBatchRanges files
// and kMaxChunk bytes), so a bootstrap of a million of them costs a few
// thousand round trips, not a million; a broker that does not know the
// batched request gets one RangeRequest per file instead. A fetch
// that sees no reply for `stall_timeout` fails, and so does one that
// receives less than `min_rate_bytes` per second over a `min_rate_window`
// (slow retrieval: a broker trickling replies just under the stall timeout
// cannot hold a mirror for ever). What an aborted transfer wrote stays
// unverified: a resumed fetch hashes it again with the rest.
// Every byte is bounded by the size the caller expects (the signed size), so
// endless data is refused. Owns its socket: one thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/net/curve.h"
#include "core/net/endpoint.h"
#include "core/wire/envelope.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

// Bounds of a RangesRequest, checked by both sides: at most this many ranges,
// their lengths summing to at most kMaxChunk, and each part's error text cut
// to kMaxPartErrorBytes.
inline constexpr size_t kMaxBatchRanges = 256;
inline constexpr size_t kMaxPartErrorBytes = 512;
// The largest ContentReply a client accepts: one chunk, or one batch (data
// summing to at most kMaxChunk, plus per-part framing and errors).
inline constexpr size_t kMaxContentReplyBytes =
    kMaxChunk + kMaxBatchRanges * (kMaxPartErrorBytes + 64) + 4096;

struct ContentClientOptions {
  uint32_t chunk_bytes = 256 * 1024;
  int credit = 16;
  std::chrono::milliseconds stall_timeout{30000};
  // fsync each fetched file. False when the caller makes a whole batch
  // durable at once (SyncFilesystem) before relying on it.
  bool fsync_each_file = true;
  // Files of at most this many bytes are fetched several to a request
  // (RangesRequest); 0 sends one RangeRequest per chunk of every file.
  uint32_t batch_file_bytes = 64 * 1024;
  // Slow-retrieval floor: a transfer that receives fewer than this many
  // bytes per second, measured over each `min_rate_window` while requests
  // are in flight, is aborted (kTimeout) and left to the caller to retry
  // (resuming what arrived). 0 turns the floor off.
  uint64_t min_rate_bytes = 4096;
  std::chrono::seconds min_rate_window{60};
  // Steady time for the stall timeout and the rate window. Not owned; must
  // outlive the client. nullptr: the real clock.
  const Clock* clock = nullptr;
  // CURVE keys (SecureClientSocket); nullopt: plain TCP.
  ClientTransport transport;
};

struct FetchStats {
  uint64_t bytes_fetched = 0;    // payload bytes received
  uint64_t bytes_signature = 0;  // signature bytes sent
  uint64_t files_fetched = 0;
};

// One whole file to fetch into `dest` (created or truncated, mode 0600).
struct FileFetch {
  std::string path;   // repo-relative path on the broker (a hint; logs)
  uint64_t size = 0;  // the signed size: exactly this many bytes
  // The signed SHA-256 (32 raw bytes): the version asked for (the broker
  // serves files by content, only versions a published manifest names), and
  // verified after the last byte. Required.
  std::string sha256;
  std::filesystem::path dest;
  // Keep what `dest` already holds (a transfer cut short) and fetch only the
  // rest; the kept prefix is hashed with the rest, so a bad one still fails.
  bool resume = false;
  // Give the complete file these permission bits and mtime (seconds), on
  // its open descriptor, so the caller needs no chmod or utimensat by path.
  bool set_mode_and_mtime = false;
  uint32_t mode = 0600;
  int64_t mtime = 0;
};

// Checks a RangesRequest against the bounds above (the broker, before it
// serves any of it).
Status CheckRangesRequest(const v1::RangesRequest& request);

// Checks that `part`, one answer of a RangesRequest, holds the whole of
// `file`: ok, the signed size, offset 0, every byte, and the signed SHA-256.
// A refusal is kRejected with the broker's reason; anything else that does
// not match is kCorruption. Untrusted input: never asserts.
Status CheckWholeFilePart(const v1::RangeReply& part, const FileFetch& file);

class ContentClient {
 public:
  ContentClient(zmq::context_t& context, HostPort content, std::string repo,
                ContentClientOptions options = {});

  // Fetches all `files` (pipelined). Returns the first error; files fetched
  // before it are complete and verified. A file without a 32-byte sha256 is
  // InvalidArgument, before anything is sent. `should_stop` is polled
  // between replies (daemon shutdown).
  Status FetchFiles(const std::vector<FileFetch>& files, FetchStats* stats,
                    const std::function<bool()>& should_stop = nullptr);

  // A manifest object (chunk or index) by its SHA-256, checked against it
  // (bounded by `max_bytes`).
  Result<std::string> FetchManifestObject(const std::string& sha256, size_t max_bytes,
                                          FetchStats* stats);

  // Asks for a delta of version `expected_sha256` (32 raw bytes; required)
  // of `path` against `signature` and writes it to `delta_dest`. Refuses
  // deltas larger than `max_delta_bytes`.
  Status FetchDelta(const std::string& path, const std::string& expected_sha256,
                    const std::string& signature, const std::filesystem::path& delta_dest,
                    uint64_t max_delta_bytes, FetchStats* stats);

 private:
  // One request -> its reply, waiting at most the stall timeout.
  Result<v1::ContentReply> Request(v1::ContentRequest request);

  HostPort content_;
  std::string repo_;
  ContentClientOptions options_;
  zmq::socket_t socket_;
  uint64_t next_request_id_ = 1;
  // False once the broker turned a RangesRequest down (it predates them).
  bool batching_ = true;
};

}  // namespace mirrorcast
