// mirrorcast-subscriber as a library: the daemon that keeps one mirror tree
// of one repo at the broker's latest serial.
//
// It verifies every event (trusted Ed25519 key, expiry, paths, serial order,
// manifest digest), stages what changed (reuse, librsync delta, or whole
// file), applies it in the safe order (see applier.h), records the serial
// durably and ACKs. Events are hints: whenever it learns of a newer serial
// (event, start-up, periodic poll) it catches up from the broker's event log,
// or jumps straight to the latest signed manifest when the log does not reach
// back far enough.
//
// Threads: Start() launches one loop thread that owns every socket and the
// state; Stop() asks it to finish and joins it (an apply in progress stops at
// its next check and leaves the tree at the old serial). Run() is Start +
// wait for SIGTERM + Stop. SyncOnce() runs one catch-up in the caller's
// thread (for --once and tests) and must not be mixed with Start().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/cli/service.h"
#include "core/crypto/keys.h"
#include "core/manifest/metadata.h"
#include "core/net/curve.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct SubscriberOptions {
  HostPort broker;
  // CURVE keys for every socket to the broker; nullopt: plain TCP
  // (subscriber/main.cc allows that only with --insecure-plaintext).
  ClientTransport transport;
  // Further brokers (a relay's mirror: its relay first, then the origin or
  // another relay), tried in order when the current one has been
  // unreachable or stale for `failover_after`; the first is probed every
  // poll while another serves, and taken back as soon as it answers with a
  // head at least the mirror's. Serials never go backwards across a switch
  // (the follower's rules), so a switch can neither lose nor repeat an apply.
  struct OtherBroker {
    HostPort address;
    ClientTransport transport;
  };
  std::vector<OtherBroker> other_brokers;
  std::chrono::seconds failover_after{30};
  // Fixed keys: origin public keys (events of any repo)...
  std::vector<std::filesystem::path> trust;
  // ...and keys trusted to sign heartbeats only (the origin broker's online key).
  std::vector<std::filesystem::path> heartbeat_trust;
  // Instead of fixed keys: the root public key(s) that sign key sets
  // (core/wire/key_trust.h). The current key set comes from the broker and
  // is kept in the state; until one arrives nothing is accepted.
  std::vector<std::filesystem::path> root_keys;
  // With heartbeat keys: report stale once the newest valid heartbeat was
  // issued longer ago than this (freeze defence).
  std::chrono::seconds stale_after{60};
  std::string repo;
  std::filesystem::path tree;
  std::filesystem::path state;
  std::string id;                                // mirror id reported in ACKs
  std::optional<std::filesystem::path> staging;  // default: <state>/staging if on the tree's
                                                 // filesystem, else <tree>/.mirrorcast-staging
  std::vector<std::string> metadata_patterns;    // empty: yum/dnf + apt defaults
  uint64_t delta_min_bytes = 64 * 1024;
  // Grace period: files an update deletes stay in the tree this long, so a
  // client that read the old metadata just before the switch still finds
  // them. 0 deletes them at the end of the apply.
  std::chrono::seconds delete_delay{0};
  // project/trace/<trace_name> and lastsync in the tree after each apply
  // (core/mirror/trace_files.h); empty: none.
  std::string trace_name;
  std::chrono::seconds poll_interval{30};  // ask the broker for its head this often
  std::chrono::milliseconds stall_timeout{30000};
  // Slow retrieval: see ContentClientOptions::min_rate_bytes (0: no floor).
  uint64_t min_rate_bytes = 4096;
  std::chrono::seconds min_rate_window{60};
  std::chrono::seconds retry_min{2};  // after a failed apply
  std::chrono::seconds retry_max{60};
  int fetch_credit = 16;
  // SyncOnce() gives up when the broker has not answered for this long (the
  // daemon keeps retrying instead).
  std::chrono::seconds once_connect_timeout{60};
  // Test hook, see ApplierOptions::after_signature.
  std::function<void(const std::string&)> after_signature;
  // Wall and steady time for expiries, staleness, polls, retries and ACK
  // backoff. Not owned; must outlive the subscriber. nullptr: the real clock.
  const Clock* clock = nullptr;

  // Embedded in another daemon (a relay broker follows its upstream with
  // one Subscriber per repo): that daemon talks to systemd, this loop does
  // not, and the hooks below tell it what happened. Both run on the loop
  // thread and must not block for long.
  bool notify_systemd = true;
  // After each apply is recorded (durable), with the new serial.
  std::function<void(uint64_t serial)> on_applied;
  // Every heartbeat that passed verification (trusted key, time checks,
  // not older than the last), as the signed bytes received.
  std::function<void(const std::string& envelope)> on_heartbeat;
};

struct SyncReport {
  uint64_t serial = 0;   // serial after the sync
  uint64_t applied = 0;  // serials applied
};

class Subscriber {
 public:
  explicit Subscriber(SubscriberOptions options);
  ~Subscriber();

  Status Start();
  void Stop();
  // CheckConfig, Start, then until SIGTERM: SIGHUP reloads the trust files;
  // systemd hears READY/STATUS/RELOADING/STOPPING and the watchdog while the
  // loop makes progress. Exit code: 0 stopped, 1 failed, 2 configuration.
  int Run();
  // The configuration's files and directories, without starting anything:
  // trust keys, tree, state, staging (`--check-config`).
  Status CheckConfig() const;
  // Re-reads the trust files in the loop thread and waits for it; a bad
  // file keeps the trust in force (logged). Not from the loop thread.
  Status ReloadTrust();
  // Brings the tree to the broker's latest serial once (no event socket).
  Result<SyncReport> SyncOnce();

  // The serial the tree is at (readable from any thread).
  uint64_t serial() const { return serial_.load(); }
  // With heartbeat keys: no valid heartbeat within stale_after (any thread).
  bool stale() const { return stale_out_.load(); }
  // The loop ended on an error (logged) rather than on Stop() (any thread).
  bool failed() const { return failed_.load(); }

 private:
  class Session;
  void Loop();

  SubscriberOptions options_;
  std::atomic<uint64_t> serial_{0};
  std::atomic<bool> stale_out_{false};
  std::atomic<bool> failed_{false};
  std::atomic<bool> stop_{false};
  ServiceNotifier service_;
  // ReloadTrust(): asked by Run(), done by the loop thread.
  struct TrustReload {
    std::atomic<uint64_t> wanted{0};
    std::atomic<uint64_t> done{0};
    std::mutex mu;
    Status result;  // under mu
  };
  TrustReload reload_;
  std::thread thread_;
  std::unique_ptr<Session> session_;
};

}  // namespace mirrorcast
