// The publisher: finds what changed in a repository tree, signs a RepoChanged
// event for it and hands it to the origin broker, succeeding only once the
// broker has durably accepted it. `mirrorcast-publish` is a thin wrapper.
//
// One Publish() call is one publish attempt:
//   1. load the signing key;
//   2. Hello to the broker: its latest serial and canonical manifest digest
//      for the repo (an absent repo is serial 0 with an empty manifest);
//   3. the previous manifest: the copy kept in the state directory when its
//      serial and root match the broker's, else the broker's (its index and
//      chunks fetched from the content socket, checked against the root);
//   4. the new manifest: a stat-only scan of the whole tree with a persistent
//      hash cache, or, with `paths_from`, the previous manifest updated for
//      just the listed paths;
//   5. nothing changed -> done, nothing is sent;
//   6. otherwise derive the new manifest root from the chunks the changes
//      fall in, sign RepoChanged(serial = latest + 1) with the change list
//      (or, when it is too large, without it after uploading the new chunks
//      and index) and send it on the control socket; on the broker's
//      confirmation the new index and chunks are kept in the state directory.
//
// State directory layout (one publisher per repo at a time):
//   <state>/<repo>.manifest.db   SQLite: the manifest index and chunks of the
//                                last serial this publisher saw confirmed
//   <state>/<repo>.hashcache.db  HashCache (SQLite) for the tree scan
//
// Not thread-safe; call from one thread. The zmq context may be shared.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/manifest/scanner.h"
#include "core/net/curve.h"
#include "core/net/endpoint.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

inline constexpr const char* kDefaultPublishStateDir = "/var/lib/mirrorcast/publish";

struct PublisherOptions {
  HostPort broker;                 // control endpoint of the origin broker
  ClientTransport transport;       // CURVE keys; nullopt: plain TCP (--insecure-plaintext)
  std::filesystem::path key_file;  // Ed25519 secret key (PREFIX.key, mode 0600)
  // More secret keys that sign the event too (cosignatures), for a key-set
  // publisher rule with a threshold above 1.
  std::vector<std::filesystem::path> cosign_key_files;
  std::string repo;            // repository name (ValidateRepoName)
  std::filesystem::path tree;  // root of the repository tree
  // When set: rescan only the paths listed in this file (ReadPathsFile; "-"
  // is standard input); otherwise scan the whole tree.
  std::optional<std::filesystem::path> paths_from;
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};  // per broker reply
  std::filesystem::path state_dir = kDefaultPublishStateDir;
  int expiry_days = 30;                   // RepoChanged.expires_unix = now + this
  std::string client_name = "publisher";  // shown in the broker's logs
  ScanOptions scan;
  const Clock* clock = &Clock::Real();  // not owned; outlives Publish()
  // A change list larger than this (serialized) is left out of the event:
  // the manifest chunks are uploaded and mirrors diff against them.
  size_t max_inline_change_bytes = kMaxInlineChangeBytes;
  // Threads that hash files (a first publish reads every file).
  int hash_threads = 2;
  // Manifest objects per PutObjects request (each chunk is at most 1 MiB).
  size_t max_upload_bytes = kMaxPutObjectsBytes;
  // A bad push is refused before anything is signed: a publish that would
  // delete more than this share of the previous manifest's entries, or leave
  // the repo empty (a wrong --tree, an unmounted volume), unless `force`.
  double max_delete_fraction = 0.10;
  bool force = false;
};

struct PublishOutcome {
  std::string repo;
  bool published = false;        // false: nothing changed, nothing was sent
  uint64_t serial = 0;           // the repo's serial after this run
  uint64_t previous_serial = 0;  // the broker's latest serial before this run
  uint64_t added = 0;
  uint64_t modified = 0;
  uint64_t deleted = 0;
  uint64_t manifest_entries = 0;
  bool previous_from_state = false;  // previous manifest came from the state dir
  ScanStats scan;
  double scan_seconds = 0;

  uint64_t changes() const { return added + modified + deleted; }
};

// Runs one publish attempt (see the top of this file). Errors:
//   InvalidArgument      bad options; unreadable key, tree, path list or state dir
//   Rejected             the publish would delete too much (see max_delete_fraction)
//   Unavailable, Timeout the broker did not answer in time
//   Rejected             the broker refused (e.g. another publish won the serial)
//   anything else        a local failure (scan I/O, manifest mismatch, ...)
// A Timeout on the publish request itself means the broker may still accept
// the event; the next run finds out from the broker's serial.
Result<PublishOutcome> Publish(const PublisherOptions& options, zmq::context_t& context);

// Parses a --paths-from list: one repo-relative path per line; blank lines and
// lines starting with '#' are ignored, a trailing '\r', leading "./" and
// trailing '/' are dropped. Every path must pass ValidateRelativePath
// (InvalidArgument naming the line otherwise). Sorted, without duplicates.
Result<std::vector<std::string>> ParsePathList(std::string_view text);
// Reads and parses a list file; "-" reads standard input.
Result<std::vector<std::string>> ReadPathsFile(const std::filesystem::path& file);

// "published repo=R serial=N changes=K (added A, modified M, deleted D)" or
// "nothing changed: repo=R stays at serial N".
std::string DescribeOutcome(const PublishOutcome& outcome);
// "scan: entries=N hashed_files=H hashed_bytes=B cache_hits=C".
std::string DescribeScan(const ScanStats& stats);

}  // namespace mirrorcast
