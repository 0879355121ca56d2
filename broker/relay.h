// Relay mode of the broker (--upstream): one Subscriber (core/mirror) per
// repo of the upstream, following it exactly as a mirror does (the same
// verification, staging, journal and crash safety) into tree_root/REPO with
// its state in <state>/relay/REPO. The broker's control thread asks which
// followers are ahead of its own heads and records what they applied
// (Broker::RecordRelayed), and takes the heartbeats they verified to pass
// them down unchanged.
//
// Threads: one loop thread per follower (Subscriber's own) and one discovery
// thread, which asks the upstream for its repos every poll and starts a
// follower for each new one (and again for one whose loop failed, after a
// pause). Start/Stop from one thread; the other methods from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/mirror/subscriber.h"
#include "core/net/curve.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace zmq {
class context_t;
}

namespace mirrorcast {

struct RelayOptions {
  std::vector<HostPort> upstream;            // tried in order
  std::vector<ClientTransport> transport;    // one per upstream
  std::filesystem::path tree_root;           // REPO is followed into tree_root/REPO
  std::filesystem::path state_root;          // and its state kept in state_root/REPO
  std::vector<std::filesystem::path> trust;  // as the broker's --trust / --root-key
  std::vector<std::filesystem::path> root_keys;
  std::vector<std::filesystem::path> heartbeat_trust;
  std::string id;  // this relay's mirror id upstream (its ACKs, its polls)
  std::chrono::seconds poll_interval{30};
  std::chrono::seconds failover_after{30};
  std::chrono::seconds stale_after{60};
  std::function<void(const std::string&)> after_signature;  // tests only
  const Clock* clock = nullptr;
};

class Relay {
 public:
  explicit Relay(RelayOptions options) : options_(std::move(options)) {}
  ~Relay() { Stop(); }

  // Starts a follower for every repo already under state_root (so a relay
  // cut off from its upstream resumes and serves what it has), then the
  // discovery thread.
  Status Start();
  void Stop();

  // SIGHUP: every follower re-reads its trust files (a bad file keeps the
  // trust in force; logged by the follower).
  void ReloadTrust();

  // Per followed repo, the serial its tree holds (durably applied).
  std::vector<std::pair<std::string, uint64_t>> Applied() const;
  // Repos whose follower reports stale (no valid heartbeat in time).
  std::vector<std::string> Stale() const;
  // Heartbeats the followers verified since the last call: (repo, envelope).
  std::vector<std::pair<std::string, std::string>> TakeHeartbeats();

  // ACK forwarding: the control thread offers one batch at a time (false
  // while one is in flight); the discovery thread sends it to the first
  // upstream that answers, retrying with backoff until one records it.
  // TakeConfirmed() is true once per batch recorded upstream.
  bool OfferAcks(v1::RelayAcksRequest batch);
  bool TakeConfirmed();

  std::filesystem::path StateOf(const std::string& repo) const {
    return options_.state_root / repo;
  }
  std::string Describe() const;

 private:
  void DiscoveryLoop();
  void SendAcks(zmq::context_t& context);
  // Starts (or restarts) the follower of `repo`; false when it cannot.
  bool Follow(const std::string& repo);

  RelayOptions options_;
  std::atomic<bool> stop_{false};
  std::thread discovery_;
  mutable std::mutex mu_;  // followers_, restart_after_, heartbeats_
  std::map<std::string, std::shared_ptr<Subscriber>> followers_;
  std::map<std::string, std::chrono::steady_clock::time_point> restart_after_;
  std::deque<std::pair<std::string, std::string>> heartbeats_;
  // The batch in flight, whether it was confirmed (under mu_), and the
  // discovery thread's retry timing.
  std::optional<v1::RelayAcksRequest> acks_;
  bool acks_confirmed_ = false;
  std::chrono::steady_clock::time_point acks_next_try_{};
  std::chrono::milliseconds acks_backoff_{1000};
  bool acks_warned_ = false;
};

}  // namespace mirrorcast
