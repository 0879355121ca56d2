// mirrorcast-broker as a library: an origin broker that accepts signed
// publishes, keeps them durably, fans them out, serves content and records
// ACKs. main.cc only parses options; tests run a Broker in-process on port 0.
//
// Sockets and threads:
//   control ROUTER (--listen) and events XPUB: the control thread, which also
//     owns the SQLite state. Every send on it is non-blocking, so a slow or
//     dead peer never stalls it.
//   content ROUTER: ContentServer's own threads (see content_server.h).
//   ZAP REP (inproc, CURVE only): ZapHandler's thread, which decides every
//     handshake against the allow-list (core/net/zap_handler.h).
// With CURVE every request on the control socket is checked against the
// sender's role (RoleMayControl) and its key's place on the allow-list in
// force; a mirror may ACK only as the name its key is listed under.
//
// Command protocol: Start() binds everything and returns once serving (or an
// error); Stop() is synchronous and idempotent; Run() is Start + wait for
// SIGTERM/SIGINT + Stop. Start/Stop are called from one thread.
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
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "broker/broker_state.h"
#include "broker/content_server.h"
#include "broker/object_store.h"
#include "broker/relay.h"
#include "broker/status_http.h"
#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/cli/service.h"
#include "core/crypto/keys.h"
#include "core/manifest/chunks.h"
#include "core/net/allow_list.h"
#include "core/net/curve.h"
#include "core/net/endpoint.h"
#include "core/net/zap_handler.h"
#include "core/wire/key_trust.h"

namespace mirrorcast {

// Limits on the control socket, per peer (PeerOf(), core/net/messages.h)
// and in all. Checked before a request is parsed: its size against its
// type's cap (read from the frame's top level, PeekRequest), the peer's
// rate and its requests waiting. Requests are then served round-robin, one
// per peer in turn, so a peer's storm of Hellos or ACKs delays a publish by
// at most one request of that peer.
struct ControlLimits {
  // Hello, Events, Ack, Status, Linked (and anything unknown); Publish and
  // PutObjects may use the socket's whole kMaxControlMessageBytes.
  size_t small_request_bytes = 64u << 10;
  double requests_per_second = 50;    // per peer, sustained
  double burst = 200;                 // per peer, at once
  size_t pending_per_peer = 16;       // received, not yet handled
  size_t pending = 4096;              // all peers
  size_t pending_bytes = 128u << 20;  // of the requests waiting, all peers
};

struct BrokerOptions {
  HostPort listen;  // control socket; port 0 = any free port
  // Transport security (docs/protocol.md, "Transport security"). CURVE on
  // every socket: the broker's secret key file (mirrorcast keygen --curve)
  // and the allow-list of client keys with their roles; both or neither.
  // Neither is plain TCP, which Start() refuses unless insecure_plaintext.
  std::optional<std::filesystem::path> curve_key;
  std::optional<std::filesystem::path> allow_file;
  bool insecure_plaintext = false;
  std::filesystem::path state_dir;
  std::filesystem::path tree_root;           // repo R is served from tree_root/R
  std::vector<std::filesystem::path> trust;  // fixed keys: publisher public keys
  // Instead of `trust`: root public keys that sign key sets (core/wire/
  // key_trust.h); the current key set is kept in <state_dir>/keyset.
  std::vector<std::filesystem::path> root_keys;
  std::optional<std::filesystem::path> port_file;  // gets "HOST:PORT" once bound
  // 0: listen port + 1 / + 2, or any free port when listening on port 0.
  uint16_t events_port = 0;
  uint16_t content_port = 0;
  int content_workers = 4;
  ContentLimits content_limits;  // per peer and in all; see content_server.h
  ControlLimits control_limits;
  // Tests only: ContentServerOptions::before_job.
  std::function<void(const std::string&, const v1::ContentRequest&)> content_before_job;
  uint64_t keep_events = 10000;  // per repo, for catch-up (older: manifest jump)
  // Per repo, for bootstrap, diffs and recalls; at least keep_versions + 1
  // (the broker raises it), so every serial whose versions are kept can be
  // recalled.
  uint64_t keep_manifests = 4;
  // Serials for which a file version replaced or deleted by a publish stays
  // servable (from the retained store, <state>/objects). 0: none are kept
  // and only the head's versions are served, from the tree.
  uint64_t keep_versions = 4;
  std::string broker_id;  // defaults to the hostname
  // The origin's online key for signed heartbeats (freshness proof); none
  // without it. Subscribers trust it for heartbeats only.
  std::optional<std::filesystem::path> heartbeat_key;
  std::chrono::seconds heartbeat_interval{10};
  // Wall and steady time for heartbeats, expiry checks, ACK and status
  // times. Not owned; must outlive the broker. nullptr: the real clock.
  const Clock* clock = nullptr;
  // A publish checks and retains its new files this many at a time, and
  // moves version rows to the state's staging tables once this many wait:
  // memory stays bounded for a change of any size (tests set them small).
  size_t record_batch_files = 8192;
  size_t stage_version_rows = 32768;
  // Linked files per control reply (the publish reply, then each page).
  size_t linked_per_reply = 250000;
  // Relay mode (docs/operations.md, "Relays"): follow these brokers (the
  // origin or another relay; the first that answers, then failover as a
  // subscriber does) exactly as a mirror does, into tree_root/REPO, and
  // re-publish each applied event unchanged once it is durable. Publishes
  // are refused. One transport for all, or one per upstream.
  std::vector<HostPort> upstream;
  std::vector<ClientTransport> upstream_transport;
  // The origin broker's heartbeat key(s): heartbeats verified with them go
  // down unchanged (without, none do and the region reports stale when its
  // mirrors expect heartbeats).
  std::vector<std::filesystem::path> heartbeat_trust;
  std::chrono::seconds upstream_poll{30};
  std::chrono::seconds upstream_failover_after{30};
  std::chrono::seconds upstream_stale_after{60};
  // Tests only: SubscriberOptions::after_signature of every follower.
  std::function<void(const std::string&)> relay_after_signature;
  // The status page, JSON and /metrics (status_http.h); none without it.
  std::optional<HostPort> http;
  std::optional<std::filesystem::path> http_port_file;  // gets "HOST:PORT" once bound
  // A mirror not heard from (poll or ACK) for this long shows as silent.
  // Subscribers poll every 30 s by default.
  int64_t silent_after_seconds = 120;
};

class Broker {
 public:
  explicit Broker(BrokerOptions options);
  ~Broker();

  Status Start();
  void Stop();
  int Run();

  uint16_t control_port() const { return control_port_; }
  uint16_t events_port() const { return events_port_; }
  uint16_t content_port() const { return content_port_; }
  uint16_t http_port() const { return http_ ? http_->port() : 0; }
  // True once a thread of the broker has ended on an error (logged).
  bool failed() const;
  // Reads the allow-list file again and puts it in force for every later
  // handshake and request (connections stay up; a key removed is refused
  // from its next request on). A file with an error changes nothing (the
  // error is logged and returned). Run() calls it on SIGHUP. Any thread.
  Status ReloadAllowList();
  // The configuration's files and directories without starting anything:
  // transport keys, allow-list, trust keys, heartbeat key, tree root, state
  // directory. An error here is the operator's to fix (exit code 2: systemd
  // does not restart the unit); Run() checks it first. `--check-config`.
  Status CheckConfig() const;
  // Re-reads the --trust / --root-key files in the control thread and waits
  // for it (a bad file keeps the trust in force; logged). Run() calls it on
  // SIGHUP. Not from the control thread.
  Status ReloadTrust();

 private:
  // The control thread: ControlLoop() through RunGuarded; a failure stops
  // the daemon (Run() returns 1) instead of leaving it up and deaf.
  void ControlThread();
  Status ControlLoop();
  // Queues one received request under its peer, or refuses it (size cap,
  // rate, queue) without parsing it.
  void AdmitControl(std::vector<zmq::message_t>& frames);
  // Handles up to `max` queued requests, one per peer in turn.
  void ServeControl(size_t max);
  void HandleControl(std::vector<zmq::message_t>& frames);
  void SendControlRefusal(zmq::message_t& identity, uint64_t request_id, const std::string& peer,
                          const std::string& limit, const std::string& message);
  // Refuses (and logs) a request the peer's role may not make, or from a
  // key no longer on the allow-list; true when it may go on. CURVE only.
  bool AdmitRole(std::vector<zmq::message_t>& frames, const std::string& peer, uint32_t body_field,
                 uint64_t request_id);
  // Logs `line` once per `key` (bounded), for refusals a peer can repeat.
  void LogOnce(const std::string& key, const std::string& line);
  // `caller`: the allow-listed identity of the sender (CURVE), nullopt on
  // plain TCP.
  v1::ControlReply Dispatch(const v1::ControlRequest& request,
                            const std::optional<PeerIdentity>& caller);
  v1::ControlReply HandlePublish(const v1::PublishRequest& request);
  // Checks that every file version the publish names anew is in the tree
  // with its signed size and mtime, records its identity and retains it
  // (recorded as pending first). Appends to `versions` and `linked`; on
  // failure the caller removes what the publish made.
  struct RecordTally {
    size_t refused_links = 0;  // versions that could not be retained
    std::string first_refusal;
    bool linked_more = false;      // links past the reply's cap were kept for paging
    size_t linked_path_bytes = 0;  // of the links in the reply
  };
  Status RecordFiles(const std::string& repo, const std::vector<v1::FileEntry>& files,
                     VersionChanges* versions,
                     google::protobuf::RepeatedPtrField<v1::LinkedFile>* linked,
                     RecordTally* tally);
  // A verified event and the manifest it leads to, to record as the repo's
  // new head: its new file versions checked in the tree and retained, the
  // manifest objects stored, the event committed to the log and fanned out
  // byte for byte. From a publisher (HandlePublish) or from this relay's
  // follower once its apply is durable (RecordRelayed).
  struct NewHead {
    const std::string& repo;
    const v1::RepoChanged& event;
    const std::string& key_id;    // that signed it
    const std::string& envelope;  // the signed bytes, stored and fanned out unchanged
    const RepoHead& head;         // the broker's head before it
    const ManifestIndex& previous;
    const ManifestIndex& next_index;  // its root is the signed one
    MemoryChunks* fresh;              // chunks of next_index not yet stored
    bool recall;
    bool relayed;   // the tree already holds every version (a follower applied it)
    bool uploaded;  // objects came by PutObjects (maybe before a restart)
  };
  v1::ControlReply RecordEvent(const NewHead& in, std::chrono::steady_clock::time_point t0);
  // Relay mode: records what the follower of `repo` has applied (its state's
  // head, envelope and manifest) when it is ahead of this broker's head.
  Status RecordRelayed(const std::string& repo);
  // Relay mode, on each control loop turn: followers that applied a serial
  // are recorded; heartbeats they received go down unchanged.
  void RelayTurn();
  std::string RelayRefusal(const std::string& what) const;
  // A key set a publisher uploaded or this relay's follower adopted: checked
  // against the root, stored, adopted.
  v1::ControlReply AdoptKeySet(const std::string& bytes);
  v1::ControlReply HandleLinked(const v1::LinkedRequest& request);
  // A recall (RepoChanged.recall_of, docs/protocol.md "Recall"): its target
  // must be in the recall window and the event must carry exactly that
  // serial's manifest; every version it names anew must be one the broker
  // still serves (retained object, or a tree file that kept its identity),
  // recorded as current again in `versions`.
  Status CheckRecall(const v1::RepoChanged& event, const RepoHead& head);
  Status RecordRecalledFiles(const std::string& repo, uint64_t recall_of,
                             const std::vector<v1::FileEntry>& files, VersionChanges* versions);
  v1::RecallWindow RecallWindowOf(const std::string& repo, const RepoHead& head);
  void PruneVersions(const std::string& repo);
  v1::ControlReply HandleEvents(const v1::EventsRequest& request);
  v1::ControlReply HandleAck(const v1::AckRequest& request,
                             const std::optional<PeerIdentity>& caller);
  v1::ControlReply HandleStatus();
  // ACKs a relay forwards for the mirrors behind it (role relay): each
  // recorded with the relay path it came through (MirrorStatus.via). Refused
  // per ACK: the relay's own name, a name this broker lists as a publisher
  // or admin, and a mirror that reports to this broker directly and was
  // seen recently (a relay cannot take over another's mirror record).
  // Why an ACK (a mirror's own or forwarded) cannot be recorded: a bad id
  // or repo, an oversized error text, a serial above the repo's head; ""
  // when it can.
  std::string AckRefusal(const v1::Ack& ack);
  v1::ControlReply HandleRelayAcks(const v1::RelayAcksRequest& request,
                                   const std::optional<PeerIdentity>& caller);
  // Relay mode: an ACK row to forward upstream (changed since it was last
  // confirmed there); every row at start, so nothing is lost in a restart.
  void MarkForward(const std::string& mirror, const std::string& repo);
  void ForwardAcks();
  // The status as `mirrorcast status` and the status page show it, with the
  // health and lag of every mirror worked out (status_page.h). Flushes the
  // liveness seen since the last flush first.
  Result<v1::StatusReply> BuildStatus();
  // --http: hands a new snapshot to the page's threads every second, and
  // soon after a publish or an ACK.
  void RefreshSnapshot(bool changed);
  // A mirror's poll (Hello with mirror_id): remembered, written in batches.
  void NoteSeen(const v1::HelloRequest& request, const std::optional<PeerIdentity>& caller);
  void FlushSeen();
  v1::ControlReply HandlePutObjects(const v1::PutObjectsRequest& request);
  v1::ControlReply HandleHello(const v1::HelloRequest& request,
                               const std::optional<PeerIdentity>& caller);
  // A key set from `mirrorcast keys publish`: checked against the current
  // root (KeyTrust::Check), written to <state>/keyset, adopted; events of the
  // log signed by keys it no longer allows are dropped (mirrors would refuse
  // them: a catch-up over them becomes a jump to the head), and a heartbeat
  // goes out so mirrors learn of it now.
  v1::ControlReply HandlePublishKeySet(const v1::PublishKeySetRequest& request);
  void DropRevokedEvents();
  void FanOut(const std::string& repo, const std::string& envelope);
  void SendHeartbeat();

  BrokerOptions options_;
  zmq::context_t context_;
  // CURVE: the broker's keys, the allow-list in force and the ZAP handler
  // (started before any server socket binds, stopped after they close).
  std::optional<CurveKeyPair> curve_;
  std::unique_ptr<CurrentAllowList> allow_;
  std::unique_ptr<ZapHandler> zap_;
  zmq::socket_t control_;
  zmq::socket_t events_;
  // Declared before content_, whose workers use it (PathOf); Retain and
  // Remove only on the control thread.
  std::unique_ptr<ObjectStore> objects_;
  std::unique_ptr<ContentServer> content_;
  std::unique_ptr<BrokerState> state_;
  // The control thread's own reader of the version table (recall checks).
  std::unique_ptr<ServableVersionReader> recall_versions_;
  KeyTrust trust_;  // control thread only (after Start)
  std::optional<SigningKey> heartbeat_key_;
  uint16_t control_port_ = 0;
  uint16_t events_port_ = 0;
  uint16_t content_port_ = 0;
  std::atomic<bool> stop_{false};
  // systemd: READY/STATUS/RELOADING/STOPPING; the control loop's progress
  // gates the watchdog.
  ServiceNotifier service_;
  // ReloadTrust(): requests counted by Run(), done by the control thread.
  std::atomic<uint64_t> trust_reload_wanted_{0};
  std::atomic<uint64_t> trust_reload_done_{0};
  std::mutex trust_reload_mu_;
  Status trust_reload_result_;  // under trust_reload_mu_
  // One line for systemctl status, written by the control thread.
  std::mutex service_status_mu_;
  std::string service_status_;
  std::chrono::steady_clock::time_point service_status_at_{};
  void UpdateServiceStatus();
  std::atomic<bool> control_failed_{false};
  std::thread control_thread_;

  // Control requests waiting, per peer, and the peers' rate buckets: the
  // control thread only.
  struct ControlPeer {
    std::deque<std::vector<zmq::message_t>> pending;
    double tokens = 0;
    std::chrono::steady_clock::time_point refilled;
    bool ready = false;  // in control_ready_
  };
  std::map<std::string, ControlPeer> control_peers_;
  std::deque<std::string> control_ready_;
  size_t control_pending_ = 0;
  size_t control_pending_bytes_ = 0;
  std::map<std::string, std::chrono::steady_clock::time_point> control_limits_logged_;
  std::set<std::string> logged_once_;  // LogOnce; the control thread only

  // Liveness (control thread only): polls not yet written, keyed by (mirror,
  // repo), and the subscriber instances last seen per mirror id, to warn
  // when two processes report as one mirror.
  std::map<std::pair<std::string, std::string>, MirrorSeen> seen_pending_;
  std::chrono::steady_clock::time_point seen_flushed_{};
  struct Instances {
    std::string current, previous;
    std::chrono::steady_clock::time_point current_seen{}, previous_seen{};
  };
  std::map<std::string, Instances> instances_;

  // Relay mode (--upstream): the followers of the upstream's repos, and per
  // repo the serial whose recording last failed (retried after a pause).
  std::unique_ptr<Relay> relay_;
  struct RelayRetry {
    uint64_t serial = 0;
    std::chrono::steady_clock::time_point next{};
  };
  std::map<std::string, RelayRetry> relay_retry_;
  // ACK rows changed since last forwarded (a generation each), and those of
  // the batch in flight with the generation sent.
  std::map<std::pair<std::string, std::string>, uint64_t> forward_dirty_, forward_inflight_;
  uint64_t forward_generation_ = 0;
  std::chrono::steady_clock::time_point forward_offered_{};

  // The owed list (docs/protocol.md, "Owed list"): mirrors of a repo that
  // have not ACKed its head are re-notified with the head's envelope, at
  // once when one (re)subscribes (XPUB_VERBOSE: a mirror that returns, or
  // whose link came back) and otherwise with a backoff of 1 s doubling to
  // 60 s, reset by each new serial. Control thread only.
  struct Owed {
    bool subscribed = false;  // a subscription arrived since the last notice
    std::chrono::steady_clock::time_point last{}, next{};
    std::chrono::milliseconds backoff{1000};
  };
  std::map<std::string, Owed> owed_;
  std::set<std::string> owing_repos_;  // repos with a mirror behind the head
  std::chrono::steady_clock::time_point owed_checked_{};
  void NoteSubscription(const std::string& repo);
  void RenotifyOwed();
  void Renotify(const std::string& repo, Owed& owed, const char* why);

  // --http: the page's server and the newest snapshot it serves.
  std::unique_ptr<StatusHttpServer> http_;
  mutable std::mutex snapshot_mu_;
  std::shared_ptr<const v1::StatusReply> snapshot_;
  std::chrono::steady_clock::time_point snapshot_made_{};
  bool snapshot_stale_ = true;  // something changed since it was made
};

}  // namespace mirrorcast
