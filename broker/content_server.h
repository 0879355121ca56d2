// The broker's content socket: serves byte ranges of the tree it fronts and
// of its manifest objects (by SHA-256), and librsync deltas against signatures that
// subscribers send.
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
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "core/base/status.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct ContentServerOptions {
  HostPort bind;                      // port 0 = any free port
  std::filesystem::path tree_root;    // repo R is served from tree_root/R
  std::filesystem::path objects_dir;  // the ManifestStore's directory
  std::filesystem::path scratch_dir;  // deltas in progress
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

  void IoLoop();
  void WorkerLoop(int index);
  v1::ContentReply Handle(const v1::ContentRequest& request);
  v1::ContentReply ServeRange(const v1::ContentRequest& request);
  v1::ContentReply ServeObject(const v1::ContentRequest& request);
  v1::ContentReply StartDelta(const v1::ContentRequest& request);
  v1::ContentReply ServeDeltaRange(const v1::ContentRequest& request);
  void ExpireDeltas();

  zmq::context_t& context_;
  ContentServerOptions options_;
  zmq::socket_t router_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread io_thread_;
  std::vector<std::thread> workers_;

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
