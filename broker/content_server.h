// The broker's content socket: serves byte ranges of published file versions
// and of its manifest objects (by SHA-256), and librsync deltas against signatures that
// subscribers send.
//
// Files are asked for by the SHA-256 of the version (the path is a hint and
// for logs). A version is served only when a published manifest of the repo
// names it (BrokerState's version table, read through each worker's own
// ServableVersionReader) and only from a file that still has the identity
// recorded when that publish committed: its retained object, else the tree
// path, opened without following any symlink (served_file.h). Anything else
// is refused with a sentence saying why.
//
// Threads: one I/O thread owns the ROUTER; `workers` threads read files and
// compute deltas, handing replies back to the I/O thread over an inproc
// PUSH/PULL pair. None of this touches the control thread, so bulk transfers
// never delay fan-out or ACKs.
//
// Security: CURVE with the ZAP domain kZapDomainContent (publish, mirror
// and relay keys; core/net/curve.h), or plain TCP.
//
// Limits (ContentLimits; a "peer" is PeerOf(), core/net/messages.h: the
// client's CURVE key, so a reconnect gains no fresh budget). Each
// peer has its own queue and workers serve the peers round-robin, so a peer
// with a thousand requests waiting delays one with a single request by at
// most one request per other peer. Checked on the I/O thread before a
// request is parsed, or before its work starts, each over-limit request gets
// a refusal saying which limit (logged once per peer and limit a minute):
//   - requests in flight (received, reply not yet handed to ZeroMQ), per peer
//     and in all, and the bytes of those requests in all;
//   - delta requests in flight per peer, and delta computations at once in
//     all (at most half the workers: files keep flowing during deltas);
//   - open delta transfers per peer, and the scratch bytes of deltas, per
//     peer and in all (a delta is cut off at what is left, and at the size of
//     the file itself, which the client would refuse anyway).
// Replies queued for one peer are bounded by the ROUTER's per-peer send
// high-water mark (reply_bytes_per_peer / the largest reply); a reply over
// it is dropped (the client's stall timeout and resume cover it) and logged
// once per peer a minute, and that peer's requests are refused without work
// for a second.
//
// Delta transfers are named by 16 random bytes (OpenSSL RAND_bytes) and bound
// to the peer that started them; another peer asking for or releasing one is
// answered as if it did not exist. A transfer not read for delta_ttl is
// removed with its scratch file.
//
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "broker/broker_state.h"
#include "broker/object_store.h"
#include "broker/served_file.h"
#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/net/allow_list.h"
#include "core/net/curve.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct ContentLimits {
  // Per peer.
  size_t requests_per_peer = 64;  // in flight; a client's credit is 16
  uint64_t reply_bytes_per_peer = 32u << 20;
  size_t deltas_per_peer = 2;     // delta requests in flight
  size_t transfers_per_peer = 4;  // computed deltas not yet released
  uint64_t scratch_bytes_per_peer = 2ull << 30;
  // The whole server.
  size_t requests = 16384;  // in flight
  uint64_t request_bytes = 128u << 20;
  size_t deltas = 0;  // computations at once; 0: half the workers, at least 1
  uint64_t scratch_bytes = 16ull << 30;
  std::chrono::seconds delta_ttl{60};  // an unread transfer is removed after this
};

struct ContentServerOptions {
  HostPort bind;                         // port 0 = any free port
  std::filesystem::path tree_root;       // repo R is served from tree_root/R
  std::filesystem::path state_dir;       // broker.db (read-only here)
  std::filesystem::path objects_dir;     // the ManifestStore's directory
  std::filesystem::path scratch_dir;     // deltas in progress
  const ObjectStore* objects = nullptr;  // retained versions (PathOf only); outlives the server
  uint64_t keep_versions = 4;            // as BrokerOptions::keep_versions
  int workers = 4;
  ContentLimits limits;
  // CURVE (the broker's key pair) and the allow-list in force; nullopt and
  // nullptr: plain TCP (--insecure-plaintext). With CURVE, a request whose
  // key was removed from the allow-list since its handshake is refused.
  std::optional<CurveKeyPair> curve;
  const CurrentAllowList* allow = nullptr;  // not owned; outlives the server
  // For limits, congestion, delta TTLs and transfer expiry. Not owned; must
  // outlive the server. nullptr: the real clock.
  const Clock* clock = nullptr;
  // Tests only: runs on a worker before each job it takes (peer, request).
  std::function<void(const std::string&, const v1::ContentRequest&)> before_job;
};

class ContentServer {
 public:
  ContentServer(zmq::context_t& context, ContentServerOptions options);
  ~ContentServer();

  Status Start();
  void Stop();
  uint16_t port() const { return port_; }
  // True once a thread of the server has ended on an error (logged).
  bool failed() const { return failed_; }

 private:
  std::chrono::steady_clock::time_point Now() const {
    return (options_.clock != nullptr ? *options_.clock : Clock::Real()).Steady();
  }
  struct Job {
    std::string identity;  // ROUTER routing id, for the reply
    std::string peer;      // PeerOf(): what limits count under
    size_t bytes = 0;      // of the request frame
    v1::ContentRequest request;
  };
  // A computed delta on disk; deleted when the last transfer and the cache
  // let go of it.
  struct DeltaFile {
    std::filesystem::path file;
    uint64_t size = 0;
    std::string error;  // set instead of file when the computation failed
    std::atomic<uint64_t>* scratch_bytes = nullptr;  // the server's count, less size when gone
    ~DeltaFile();
  };
  using DeltaPtr = std::shared_ptr<const DeltaFile>;
  struct Transfer {
    std::string peer;
    DeltaPtr delta;
    std::chrono::steady_clock::time_point used;
  };
  // Mirrors holding the same old version send the same signature: the delta
  // for (file version, signature) is computed once and shared.
  struct CachedDelta {
    std::shared_future<DeltaPtr> delta;
    std::chrono::steady_clock::time_point created;
  };
  // What one peer holds. Erased once it holds nothing.
  struct Peer {
    std::deque<Job> queue;       // received, not started
    size_t in_flight = 0;        // queued + running + reply on its way to the ROUTER
    size_t deltas = 0;           // delta requests among in_flight
    size_t transfers = 0;        // open delta transfers
    uint64_t scratch_bytes = 0;  // of its open transfers and running computations
    bool ready = false;          // in ready_ (has queued jobs)
  };

  // A published version opened for serving (public for OpenPublished).
 public:
  struct OpenVersion {
    OpenedFile file;
    FileIdentity identity;         // as recorded; the file must keep it while read
    std::filesystem::path source;  // where it was opened (for ComputeDelta)
    std::string tree_path;         // empty when served from the retained object
  };

 private:
  // Runs a thread's loop; an exception or an unasked end sets failed_.
  void Guarded(std::string_view name, const std::function<void()>& loop);
  void IoLoop();
  // Admits one request received on the ROUTER (or refuses it). I/O thread.
  void Admit(std::vector<zmq::message_t>& frames);
  // Sends one reply to `identity`, dropping it when the peer's queue is full
  // or the peer is gone. I/O thread.
  void SendReply(const std::string& identity, const std::string& peer, zmq::message_t& reply);
  void WorkerLoop(ServableVersionReader* versions);
  // The next job, round-robin over peers; false when none may start now.
  // Under mu_.
  bool TakeJob(Job* job);
  void ReleasePeerIfIdle(const std::string& peer);  // under mu_
  v1::ContentReply Handle(const Job& job, ServableVersionReader& versions);
  v1::ContentReply ServeRange(const v1::ContentRequest& request, ServableVersionReader& versions,
                              const std::string& peer);
  v1::ContentReply ServeObject(const v1::ContentRequest& request);
  v1::ContentReply StartDelta(const Job& job, ServableVersionReader& versions);
  v1::ContentReply ServeDeltaRange(const Job& job);

 public:
  // The version `sha256` of `repo`, from its retained object or the tree.
  // Refusals are kRejected with the reason for the client. Thread-safe with
  // a reader of the calling thread's own: the control thread asks too, to
  // check that a recall names only versions that can still be served.
  Result<OpenVersion> OpenPublished(ServableVersionReader& versions, const std::string& repo,
                                    const std::string& sha256, const std::string& path);

 private:
  // Whether `open` still names the bytes it was opened with.
  bool StillPublished(const std::string& repo, const OpenVersion& open) const;
  // Logs a refused request once per (repo, version, reason) a minute, and at
  // most 10 lines per peer a minute, so a client retrying a refused file, or
  // asking for many, does not flood the log.
  void LogRefusal(const std::string& peer, const std::string& repo, const std::string& sha256,
                  const std::string& path, const std::string& reason);
  // Logs that `peer` hit `limit`, once per (peer, limit) a minute, with the
  // first `detail` (our words, peer text in it escaped).
  void LogLimit(const std::string& peer, const std::string& limit, const std::string& detail = "");
  void ExpireDeltas();
  size_t MaxDeltas() const;

  zmq::context_t& context_;
  ContentServerOptions options_;
  zmq::socket_t router_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::thread io_thread_;
  std::vector<std::thread> workers_;
  std::vector<std::unique_ptr<ServableVersionReader>> readers_;  // one per worker

  std::mutex logged_mu_;  // guards refusals_logged_, refusal_budget_, limits_logged_
  std::map<std::string, std::chrono::steady_clock::time_point> refusals_logged_;
  // Per peer: the start of its log window and the refusal lines in it.
  std::map<std::string, std::pair<std::chrono::steady_clock::time_point, int>> refusal_budget_;
  std::map<std::string, std::chrono::steady_clock::time_point> limits_logged_;

  // Guards everything below.
  std::mutex mu_;
  std::condition_variable jobs_cv_;
  std::map<std::string, Peer> peers_;
  std::deque<std::string> ready_;  // peers with queued jobs, in serving order
  size_t in_flight_ = 0;
  uint64_t in_flight_bytes_ = 0;
  size_t running_deltas_ = 0;
  uint64_t scratch_reserved_ = 0;              // bytes computations in progress may still write
  std::map<std::string, Transfer> transfers_;  // by token
  std::map<std::string, CachedDelta> delta_cache_;
  // Peers whose reply queue was full, until when their requests are refused.
  std::map<std::string, std::chrono::steady_clock::time_point> congested_;
  uint64_t next_delta_file_ = 1;
  // Bytes of delta files on disk (DeltaFile adds and subtracts; atomic since
  // a DeltaFile may die outside mu_).
  std::atomic<uint64_t> scratch_bytes_{0};
};

}  // namespace mirrorcast
