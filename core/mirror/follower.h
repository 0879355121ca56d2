// The one apply engine: brings a mirror's tree from the serial it holds to a
// broker's latest, and records what happened. The subscriber daemon, `mirrorcast
// verify --repair` (through Applier) and relay brokers all use it; nothing
// else decides the apply order, the staging choice or the state schema.
//
// A catch-up verifies every event (trusted Ed25519 key, expiry, repo, serial
// order, the signed manifest digest) before a byte is fetched, squashes a
// chain of missed serials into one net apply, or jumps straight to the
// latest signed manifest when the log does not reach back far enough. Each
// apply is Stage (content into staging, verified) -> Journal -> Commit (in
// phases) -> Record (serial, manifest and the `applied` ACK in one SQLite
// transaction); see applier.h and mirror_state.h.
//
// The follower owns the mirror's state and applier but no socket: the caller
// hands it a BrokerLink for each catch-up and delivers the ACKs it queues
// (MirrorState::PendingAcks). Not thread-safe: one thread owns a Follower.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "core/crypto/keys.h"
#include "core/mirror/applier.h"
#include "core/mirror/mirror_state.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/wire/key_trust.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

struct FollowerOptions {
  std::string repo;
  std::string mirror_id;  // reported in ACKs
  std::filesystem::path tree;
  std::filesystem::path state;
  std::optional<std::filesystem::path> staging;  // default: see ChooseStaging
  std::vector<std::string> metadata_patterns;    // empty: yum/dnf + apt defaults
  uint64_t delta_min_bytes = 64 * 1024;
  // Grace period for deletions; 0 deletes at the end of the apply.
  std::chrono::seconds delete_delay{0};
  // Test hook, see ApplierOptions::after_signature.
  std::function<void(const std::string&)> after_signature;
  // Wall clock for expiries, ACK times and deletion deadlines. Not owned;
  // must outlive the follower. nullptr: the real clock.
  const Clock* clock = nullptr;
  // After each applied serial, project/trace/<trace_name> (Debian) and
  // lastsync (Arch) are written into the tree (trace_files.h); empty: none.
  std::string trace_name;
};

// What a catch-up talks to: one broker's control and content sockets. The
// implementation may reconnect inside Head() (a broker that restarted on
// other ports); control() and content() are valid until the next Head().
class BrokerLink {
 public:
  virtual ~BrokerLink() = default;
  // The broker's latest serial of the followed repo (0: it has none).
  virtual Result<uint64_t> Head() = 0;
  virtual ControlClient& control() = 0;
  virtual ContentClient& content() = 0;
};

// Where staged content goes: `override` if given, else <state>/staging when
// the state directory is on the tree's filesystem, else
// <tree>/.mirrorcast-staging. Creates it and checks that a rename from it
// into the tree works (atomic only within one mount).
Result<std::filesystem::path> ChooseStaging(const std::filesystem::path& state,
                                            const std::filesystem::path& tree,
                                            const std::optional<std::filesystem::path>& override);

class Follower {
 public:
  // Opens the state, finishes an interrupted apply when it can (if not, its
  // journal and staged files stay and every catch-up retries), and adopts an
  // unknown tree by scanning it so its content can be reused.
  // `trust`: the keys that may sign events for this repo (fixed, or a root
  // key whose key set is kept in the state: the stored one is adopted here).
  static Result<std::unique_ptr<Follower>> Open(FollowerOptions options, KeyTrust trust);

  // Brings the tree to the broker's latest serial. Ok when at the latest.
  // `should_stop` is polled between steps; a stop mid-stage leaves the tree
  // at its old serial.
  Status CatchUp(BrokerLink& broker, const std::function<bool()>& should_stop);

  // Finishes an apply interrupted after its journal was written. Ok when
  // there was none.
  Status ResumeJournal();

  // Verifies a RepoChanged envelope for this repo against `trust`, with
  // expiry and publish time judged at `now_unix` (one fixed time for every
  // check of one verification pass), or at the clock's now.
  Result<v1::RepoChanged> Verify(const std::string& envelope, int64_t now_unix) const;
  Result<v1::RepoChanged> Verify(const std::string& envelope) const;

  // Whether an event of `serial` with manifest root `digest` moves this
  // mirror forward: ok when `serial` is newer than the recorded one;
  // AlreadyExists for the recorded serial and digest (nothing to do);
  // Rejected for an older serial (rollback) or the recorded serial with
  // another digest (conflict). Serials never go backwards on any path.
  Status CheckForward(uint64_t serial, const std::string& digest) const;

  // The keys this mirror accepts now.
  const KeyTrust& trust() const { return trust_; }
  // Puts reloaded trust in force (SIGHUP: ReloadKeyTrust, which keeps the
  // adopted key set).
  void ReplaceTrust(KeyTrust trust) { trust_ = std::move(trust); }

  // A key set a broker handed over (HelloReply.key_set; empty: none). With a
  // root key: adopted when CheckKeySetUpdate allows it, durably first
  // (MirrorState::StoreKeySet), applying its serial reset of this repo if it
  // voids the recorded serial (fast-forward recovery, docs/protocol.md);
  // refused (reported once) when older, expired or not signed by the
  // current root. Ok when adopted or already current, or in fixed-keys mode.
  Status OfferKeySet(const std::string& signed_bytes);

  // Queues (durably) an ACK for the tree's current serial; then calls
  // on_ack_queued so the owner can deliver it.
  void Ack(v1::AckState state, uint64_t target, const ApplyStats& stats, double seconds,
           const std::string& error);
  // Reports a refusal: logged, recorded in the state (MirrorState::Refusals)
  // and ACKed as rejected, once per distinct reason per run (a refusal
  // repeated on every retry is neither a log flood nor a durable write nor
  // an ACK each time). Returns `why`.
  Status Refuse(uint64_t serial, const Status& why);
  void Reject(uint64_t serial, const Status& why);

  // Carries out the deferred deletions that are due.
  void SweepDeletions();

  uint64_t serial() const { return state_->serial(); }
  MirrorState& state() { return *state_; }
  const FollowerOptions& options() const { return options_; }

  // Called after an ACK was queued (deliver it now).
  std::function<void()> on_ack_queued;
  // Called after each apply is recorded, with the new serial.
  std::function<void(uint64_t)> on_applied;

 private:
  Follower(FollowerOptions options, KeyTrust trust)
      : options_(std::move(options)), trust_(std::move(trust)) {}
  Status Init();
  const Clock& clock() const { return options_.clock ? *options_.clock : Clock::Real(); }
  // When deletions of an apply committed now fall due (0: no grace period).
  int64_t DeleteAfter() const;
  Status ApplyChain(BrokerLink& broker, const std::vector<v1::RepoChanged>& chain,
                    const std::function<bool()>& should_stop);
  Status JumpTo(BrokerLink& broker, const v1::RepoChanged& event,
                const std::function<bool()>& should_stop);
  // `target`: the manifest that `changes` turn this mirror's into, its
  // root already checked against the signed one.
  // `list` is the change list; `changes` the same in memory, or null when it
  // is stored in the state (too large to hold).
  Status ApplyChanges(BrokerLink& broker, uint64_t serial, const std::string& digest,
                      const AppliedManifest& target, ChangeList& list,
                      const std::vector<v1::Change>* changes,
                      const std::function<bool()>& should_stop);
  v1::Ack MakeAck(v1::AckState state, uint64_t serial, uint64_t target, const ApplyStats& stats,
                  double seconds, const std::string& error) const;
  // A log line (files and bytes done of the total, rate, ETA) and an
  // ACK_IN_PROGRESS, every few seconds of a long fetch.
  void ReportProgress(const FetchProgress& progress);
  // The trace files after serial `serial` applied (a failure is logged once
  // until they are written again; the apply stands).
  void WriteTrace(const std::string& upstream, uint64_t serial, int64_t started_unix,
                  uint64_t bytes_fetched);

  FollowerOptions options_;
  KeyTrust trust_;
  std::unique_ptr<MirrorState> state_;
  std::unique_ptr<Applier> applier_;
  std::set<std::string> reported_;  // refusal reasons reported this run
  uint64_t applying_serial_ = 0;
  // The signed envelope of the event being applied (CatchUp sets it).
  std::string applying_envelope_;
  bool trace_failed_ = false;  // the last trace write failed (and was logged)
};

}  // namespace mirrorcast
