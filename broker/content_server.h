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
// compute deltas, taking requests from a shared queue (an idle worker takes
// the next request, so one long delta never holds up small reads) and handing
// replies back to the I/O thread over an inproc PUSH/PULL pair. None of this
// touches the control thread, so bulk transfers never delay fan-out or ACKs.
//
// Command protocol: Start() returns once the socket is bound; Stop() joins
// every thread. Neither is thread-safe against itself.
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
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "broker/broker_state.h"
#include "broker/object_store.h"
#include "broker/served_file.h"
#include "core/base/status.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct ContentServerOptions {
  HostPort bind;                         // port 0 = any free port
  std::filesystem::path tree_root;       // repo R is served from tree_root/R
  std::filesystem::path state_dir;       // broker.db (read-only here)
  std::filesystem::path objects_dir;     // the ManifestStore's directory
  std::filesystem::path scratch_dir;     // deltas in progress
  const ObjectStore* objects = nullptr;  // retained versions (PathOf only); outlives the server
  uint64_t keep_versions = 4;            // as BrokerOptions::keep_versions
  int workers = 4;
  std::chrono::seconds delta_ttl{600};  // an abandoned delta is deleted after this
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
  struct Job {
    std::string identity;
    v1::ContentRequest request;
  };
  // A computed delta on disk; deleted when the last transfer and the cache
  // let go of it.
  struct DeltaFile {
    std::filesystem::path file;
    uint64_t size = 0;
    std::string error;  // set instead of file when the computation failed
    ~DeltaFile();
  };
  using DeltaPtr = std::shared_ptr<const DeltaFile>;
  struct Transfer {
    DeltaPtr delta;
    std::chrono::steady_clock::time_point used;
  };
  // Mirrors holding the same old version send the same signature: the delta
  // for (file version, signature) is computed once and shared.
  struct CachedDelta {
    std::shared_future<DeltaPtr> delta;
    std::chrono::steady_clock::time_point created;
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
  void WorkerLoop(ServableVersionReader* versions);
  v1::ContentReply Handle(const v1::ContentRequest& request, ServableVersionReader& versions);
  v1::ContentReply ServeRange(const v1::ContentRequest& request, ServableVersionReader& versions);
  v1::ContentReply ServeObject(const v1::ContentRequest& request);
  v1::ContentReply StartDelta(const v1::ContentRequest& request, ServableVersionReader& versions);
  v1::ContentReply ServeDeltaRange(const v1::ContentRequest& request);

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
  // Logs a refused request once per (repo, version, reason) a minute, so a
  // client retrying a refused file does not flood the log.
  void LogRefusal(const std::string& repo, const std::string& sha256, const std::string& path,
                  const std::string& reason);
  void ExpireDeltas();

  zmq::context_t& context_;
  ContentServerOptions options_;
  zmq::socket_t router_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::thread io_thread_;
  std::vector<std::thread> workers_;
  std::vector<std::unique_ptr<ServableVersionReader>> readers_;  // one per worker

  std::mutex refusals_mu_;
  std::map<std::string, std::chrono::steady_clock::time_point> refusals_logged_;

  std::mutex jobs_mu_;
  std::condition_variable jobs_cv_;
  std::deque<Job> jobs_;

  std::mutex deltas_mu_;
  std::map<uint64_t, Transfer> transfers_;
  std::map<std::string, CachedDelta> delta_cache_;
  uint64_t next_transfer_id_ = 1;
  uint64_t next_delta_file_ = 1;
};

}  // namespace mirrorcast
