#include "subscriber/subscriber.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <system_error>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/cli/signals.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/manifest/manifest.h"
#include "core/manifest/scanner.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"
#include "subscriber/applier.h"
#include "subscriber/local_state.h"

namespace mirrorcast {

namespace fs = std::filesystem;
using Millis = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr Millis kControlTimeout{5000};
constexpr uint32_t kEventsPerRequest = 100;
constexpr size_t kMaxManifestBytes = kMaxControlMessageBytes;

// Replaying more events than this costs more than one manifest download.
constexpr size_t kMaxReplayChanges = 200000;

// Staged files reach the tree by rename(2), which is atomic only within one
// mount: st_dev alone misses two bind mounts of one filesystem, so try it.
Status CheckRenameWorks(const fs::path& staging, const fs::path& tree) {
  const std::string name = ".mirrorcast-probe-" + std::to_string(::getpid());
  const fs::path from = staging / name;
  const fs::path to = tree / name;
  {
    UniqueFd fd(::open(from.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd.valid()) return Status::FromErrno("create " + from.string(), errno);
  }
  if (::rename(from.c_str(), to.c_str()) != 0) {
    const int err = errno;
    ::unlink(from.c_str());
    if (err == EXDEV) {
      return Status::InvalidArgument("staging directory " + staging.string() +
                                     " is not on the tree's mount: renames would not be atomic "
                                     "(use --staging on the tree's filesystem)");
    }
    return Status::FromErrno("rename probe into " + tree.string(), err);
  }
  ::unlink(to.c_str());
  return Status::Ok();
}

}  // namespace

// Everything the loop thread owns. Created and used on one thread only.
class Subscriber::Session {
 public:
  Session(const SubscriberOptions& options, std::atomic<bool>& stop, std::atomic<uint64_t>& serial)
      : options_(options), stop_(stop), serial_out_(serial), context_(1) {}

  // Opens state, finishes an interrupted apply, adopts an unknown tree, and
  // connects (retrying until the broker answers or Stop()).
  // `once`: give up after options.once_connect_timeout (SyncOnce).
  Status Init(bool once = false);
  // Brings the tree to the broker's latest serial. Ok when at the latest.
  Status CatchUp();
  // Serves events until Stop().
  void Serve();
  void FlushAcks();

 private:
  Status Connect(bool once);
  // (Re)creates the content and event sockets for the ports in `hello`.
  void Attach(const v1::HelloReply& hello);
  Status ResumeJournal();
  Result<v1::RepoChanged> Verify(const std::string& envelope);
  // Handles any envelope from the event socket: events, heartbeats.
  void OnBroadcast(const std::string& envelope, bool* need_sync);
  void CheckFreshness();
  // When deletions of an apply committed now fall due (0: no grace period).
  int64_t DeleteAfter() const {
    const auto delay = options_.delete_delay.count();
    return delay > 0 ? Clock::Real().NowUnix() + delay : 0;
  }
  // Carries out the deferred deletions that are due.
  void SweepDeletions();
  // A broadcast named `serial`, newer than the tree.
  void NoteNewer(uint64_t serial, bool* need_sync) {
    *need_sync = true;
    if (serial > highest_seen_) {
      highest_seen_ = serial;
      poked_ = true;
    }
  }
  // Applies a verified chain of events that starts at this mirror's serial.
  Status ApplyChain(const std::vector<v1::RepoChanged>& chain);
  Status JumpTo(const v1::RepoChanged& event);
  // `target`: the manifest that `changes` turn this mirror's into, its
  // digest already checked against the signed one.
  Status ApplyChanges(uint64_t serial, const std::string& digest, Manifest target,
                      const std::vector<v1::Change>& changes);
  v1::Ack MakeAck(v1::AckState state, uint64_t serial, uint64_t target, const ApplyStats& stats,
                  double seconds, const std::string& error) const;
  // Queues (durably) and sends an ACK for the tree's current serial.
  void Ack(v1::AckState state, uint64_t target, const ApplyStats& stats, double seconds,
           const std::string& error);
  void Reject(uint64_t serial, const Status& why);
  // Hello: the broker's latest serial of our repo; reattaches when the
  // broker's event or content port moved (it restarted elsewhere).
  Result<uint64_t> RefreshBroker();
  bool ShouldStop() const { return stop_.load(); }

  const SubscriberOptions& options_;
  std::atomic<bool>& stop_;
  std::atomic<uint64_t>& serial_out_;
  zmq::context_t context_;
  TrustStore trust_;
  std::unique_ptr<LocalState> state_;
  std::unique_ptr<Applier> applier_;
  std::unique_ptr<ControlClient> control_;
  std::unique_ptr<ContentClient> content_;
  std::unique_ptr<zmq::socket_t> events_;
  uint32_t events_port_ = 0;
  uint32_t content_port_ = 0;
  uint64_t last_rejected_ = 0;
  uint64_t highest_seen_ = 0;  // newest serial any broadcast named
  bool poked_ = false;         // a broadcast named a serial not seen before

  // Freshness: only with heartbeat keys configured.
  TrustStore heartbeat_trust_;
  int64_t last_heartbeat_issued_ = 0;
  int64_t started_unix_ = 0;
  bool stale_ = false;
  SteadyClock::time_point next_ack_try_{};
  Millis ack_backoff_{1000};
};

Status Subscriber::Session::Init(bool once) {
  for (const auto& file : options_.trust) {
    MC_RETURN_IF_ERROR(trust_.AddFile(file).WithContext("trust key " + file.string()));
  }
  if (trust_.empty()) return Status::InvalidArgument("no trusted origin key (--trust)");
  for (const auto& file : options_.heartbeat_trust) {
    MC_RETURN_IF_ERROR(
        heartbeat_trust_.AddFile(file).WithContext("heartbeat key " + file.string()));
  }
  started_unix_ = Clock::Real().NowUnix();
  MC_RETURN_IF_ERROR(ValidateRepoName(options_.repo));
  std::error_code ec;
  fs::create_directories(options_.tree, ec);
  if (ec) return Status::IoError("create tree " + options_.tree.string() + ": " + ec.message());
  MC_ASSIGN_OR_RETURN(state_, LocalState::Open(options_.state, options_.repo));

  ApplierOptions apply;
  apply.tree = options_.tree;
  if (options_.staging) {
    apply.staging = *options_.staging;
  } else {
    MC_ASSIGN_OR_RETURN(bool same, SameFilesystem(options_.state, options_.tree));
    apply.staging = same ? options_.state / "staging" : options_.tree / ".mirrorcast-staging";
  }
  fs::create_directories(apply.staging, ec);
  MC_RETURN_IF_ERROR(CheckRenameWorks(apply.staging, options_.tree));
  if (!options_.metadata_patterns.empty()) {
    apply.metadata = MetadataMatcher(options_.metadata_patterns);
  }
  apply.delta_min_bytes = options_.delta_min_bytes;
  apply.defer_deletions = options_.delete_delay.count() > 0;
  apply.after_signature = options_.after_signature;
  applier_ = std::make_unique<Applier>(std::move(apply));

  // An apply interrupted after staging: finish it before anything else. If
  // that fails now (disk still full?), the staged files and the journal stay
  // and every catch-up tries again; the daemon keeps running meanwhile.
  if (Status resumed = ResumeJournal(); !resumed.ok()) {
    MC_LOG(error) << "cannot finish the interrupted apply yet: " << resumed.ToString()
                  << " (retrying; clients still see a consistent tree)";
  } else {
    // Content an interrupted Stage already fetched stays for reuse.
    MC_RETURN_IF_ERROR(applier_->ClearStaging(/*keep_content=*/true));
  }

  if (!state_->initialized()) {
    // First start: learn what the tree already holds, so it can be reused.
    auto cache = HashCache::Open(options_.state / "hashcache.db");
    if (!cache.ok()) return cache.status();
    ScanStats stats;
    ScanOptions scan;
    MC_ASSIGN_OR_RETURN(Manifest scanned, ScanTree(options_.tree, cache->get(), &stats, scan));
    MC_LOG(info) << "adopting existing tree: entries=" << stats.entries
                 << " hashed_bytes=" << stats.bytes_hashed;
    MC_RETURN_IF_ERROR(state_->Adopt(std::move(scanned)));
  }
  serial_out_ = state_->serial();
  MC_LOG(info) << "mirror " << options_.id << " repo=" << options_.repo
               << " at serial=" << state_->serial() << " tree=" << options_.tree.string();
  return Connect(once);
}

Status Subscriber::Session::ResumeJournal() {
  MC_ASSIGN_OR_RETURN(auto journal, state_->ReadJournal());
  if (!journal) return Status::Ok();
  MC_LOG(warning) << "finishing interrupted apply of serial " << journal->serial;
  MC_RETURN_IF_ERROR(applier_->Commit(journal->changes).WithContext("resume apply"));
  const v1::Ack ack =
      MakeAck(v1::ACK_APPLIED, journal->serial, journal->serial, ApplyStats{}, 0.0, "");
  MC_RETURN_IF_ERROR(state_->CommitApply(journal->serial, journal->manifest_sha256,
                                         journal->changes, &ack, DeleteAfter()));
  serial_out_ = journal->serial;
  MC_LOG(info) << "resumed apply done: repo=" << options_.repo << " serial=" << journal->serial;
  if (control_) FlushAcks();  // else sent once connected
  return applier_->ClearStaging();
}

Status Subscriber::Session::Connect(bool once) {
  control_ = std::make_unique<ControlClient>(context_, options_.broker);
  auto backoff = Millis(200);
  const auto give_up = SteadyClock::now() + options_.once_connect_timeout;
  for (;;) {
    auto hello = control_->Hello("subscriber " + options_.id, kControlTimeout);
    if (hello.ok()) {
      Attach(*hello);
      MC_LOG(info) << "connected to broker " << hello->broker_id() << " at "
                   << options_.broker.ToString();
      FlushAcks();  // whatever a previous run could not deliver
      return Status::Ok();
    }
    if (once && SteadyClock::now() >= give_up) {
      return hello.status();
    }
    MC_LOG(warning) << "broker " << options_.broker.ToString()
                    << " not answering: " << hello.status().ToString() << "; retrying";
    const auto until = SteadyClock::now() + backoff;
    while (SteadyClock::now() < until) {
      if (ShouldStop()) return Status::Unavailable("stopped before the broker answered");
      std::this_thread::sleep_for(Millis(50));
    }
    backoff = std::min(backoff * 2, Millis(10000));
  }
}

void Subscriber::Session::Attach(const v1::HelloReply& hello) {
  ContentClientOptions content;
  content.stall_timeout = options_.stall_timeout;
  content.credit = options_.fetch_credit;
  content.fsync_each_file = false;  // Applier::Stage syncs the staging filesystem once
  content_ = std::make_unique<ContentClient>(
      context_, options_.broker.WithPort(static_cast<uint16_t>(hello.content_port())),
      options_.repo, content);
  events_ = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::sub);
  ConfigureSocket(*events_, options_.broker, static_cast<int64_t>(kMaxEnvelopeBytes) + 1024);
  events_->set(zmq::sockopt::rcvhwm, 10000);
  std::string topic = options_.repo;
  topic.push_back('\0');
  events_->set(zmq::sockopt::subscribe, topic);
  events_->connect(options_.broker.WithPort(static_cast<uint16_t>(hello.events_port())).Endpoint());
  events_port_ = hello.events_port();
  content_port_ = hello.content_port();
}

Result<v1::RepoChanged> Subscriber::Session::Verify(const std::string& envelope) {
  MC_ASSIGN_OR_RETURN(OpenedEnvelope opened, OpenEnvelope(envelope, trust_));
  if (!opened.payload.has_repo_changed()) return Status::Rejected("not a RepoChanged event");
  v1::RepoChanged event = std::move(*opened.payload.mutable_repo_changed());
  if (event.repo() != options_.repo) {
    return Status::Rejected("event for repo '" + event.repo() + "', expected '" + options_.repo +
                            "'");
  }
  MC_RETURN_IF_ERROR(CheckRepoChanged(event, Clock::Real().NowUnix()));
  return event;
}

Result<uint64_t> Subscriber::Session::RefreshBroker() {
  MC_ASSIGN_OR_RETURN(v1::HelloReply hello,
                      control_->Hello("subscriber " + options_.id, kControlTimeout));
  if (hello.events_port() != events_port_ || hello.content_port() != content_port_) {
    MC_LOG(info) << "broker moved its event/content ports to " << hello.events_port() << "/"
                 << hello.content_port() << "; reconnecting";
    Attach(hello);
  }
  for (const auto& r : hello.repos()) {
    if (r.repo() == options_.repo) return r.serial();
  }
  return uint64_t{0};
}

Status Subscriber::Session::CatchUp() {
  MC_RETURN_IF_ERROR(ResumeJournal());
  SweepDeletions();
  for (;;) {
    if (ShouldStop()) return Status::Unavailable("stopping");
    MC_RETURN_IF_ERROR(RefreshBroker().status());
    const uint64_t local = state_->serial();
    MC_ASSIGN_OR_RETURN(v1::EventsReply reply,
                        control_->Events(options_.repo, local, kEventsPerRequest, kControlTimeout));
    if (reply.latest_serial() <= local) {
      if (reply.latest_serial() < local) {
        MC_LOG(warning) << "broker is at serial " << reply.latest_serial()
                        << ", behind this mirror (" << local << "); keeping the newer tree";
      }
      return Status::Ok();
    }
    // Verify what the log gives; stop at the first bad event.
    std::vector<v1::RepoChanged> chain;
    size_t total_changes = 0;
    for (const auto& envelope : reply.envelopes()) {
      auto event = Verify(envelope);
      if (!event.ok()) {
        Reject(0, event.status());
        return event.status();
      }
      total_changes += static_cast<size_t>(event->changes_size());
      chain.push_back(std::move(*event));
    }
    const bool contiguous = !chain.empty() && chain.front().previous_serial() == local;
    if (contiguous && !reply.gap() && total_changes <= kMaxReplayChanges) {
      Status s = ApplyChain(chain);
      if (s.ok()) continue;  // more may have arrived meanwhile
      if (s.code() != Status::Code::kFailedPrecondition) return s;
      MC_LOG(warning) << s.message() << "; jumping to the latest signed manifest";
    }
    // Too far behind, or the log does not fit this tree: jump to the latest.
    MC_ASSIGN_OR_RETURN(
        v1::EventsReply latest,
        control_->Events(options_.repo, reply.latest_serial() - 1, 1, kControlTimeout));
    if (latest.envelopes_size() == 0) return Status::Unavailable("broker has no latest event");
    auto event = Verify(latest.envelopes(0));
    if (!event.ok()) {
      Reject(0, event.status());
      return event.status();
    }
    MC_RETURN_IF_ERROR(JumpTo(*event));
  }
}

Status Subscriber::Session::ApplyChain(const std::vector<v1::RepoChanged>& chain) {
  // Each signed change list must take the manifest to its signed digest
  // (mix-and-match defence) before any byte is fetched. A mirror whose tree
  // differs (adopted from a scan, or repaired) jumps to the manifest instead.
  Manifest next = state_->manifest();
  for (const auto& event : chain) {
    Status applies = next.ApplyChanges(event.changes());
    if (!applies.ok() || next.Digest() != event.manifest_sha256()) {
      return Status::FailedPrecondition(
          "event " + std::to_string(event.serial()) +
          " does not fit this mirror's tree at serial " + std::to_string(state_->serial()) +
          (applies.ok() ? " (manifest digest differs)" : ": " + applies.message()));
    }
  }
  // Several serials behind: only the newest content is still served, so the
  // chain is squashed into one apply of its net change list.
  const v1::RepoChanged& last = chain.back();
  std::vector<v1::Change> changes;
  if (chain.size() == 1) {
    changes.assign(last.changes().begin(), last.changes().end());
  } else {
    changes = DiffManifests(state_->manifest(), next);
  }
  return ApplyChanges(last.serial(), last.manifest_sha256(), std::move(next), changes);
}

Status Subscriber::Session::JumpTo(const v1::RepoChanged& event) {
  FetchStats stats;
  auto bytes = content_->FetchManifest(event.serial(), kMaxManifestBytes, &stats);
  if (!bytes.ok()) {
    ApplyStats none;
    none.bytes_fetched = stats.bytes_fetched;
    Ack(v1::ACK_FAILED, event.serial(), none, 0.0,
        "manifest " + std::to_string(event.serial()) + ": " + bytes.status().ToString());
    return bytes.status();
  }
  auto target = Manifest::Parse(*bytes);
  if (!target.ok()) {
    Reject(event.serial(), target.status());
    return target.status();
  }
  if (target->repo() != options_.repo || target->serial() != event.serial() ||
      target->Digest() != event.manifest_sha256()) {
    Status why = Status::Rejected("manifest " + std::to_string(event.serial()) +
                                  " does not match the signed event (mix-and-match)");
    Reject(event.serial(), why);
    return why;
  }
  std::vector<v1::Change> changes = DiffManifests(state_->manifest(), *target);
  MC_LOG(info) << "jumping from serial " << state_->serial() << " to " << event.serial() << " ("
               << changes.size() << " changes)";
  return ApplyChanges(event.serial(), event.manifest_sha256(), std::move(*target), changes);
}

Status Subscriber::Session::ApplyChanges(uint64_t serial, const std::string& digest,
                                         Manifest target, const std::vector<v1::Change>& changes) {
  const auto started = SteadyClock::now();
  ApplyStats stats;
  auto seconds = [&] {
    return std::chrono::duration<double>(SteadyClock::now() - started).count();
  };
  Status staged = applier_->Stage(state_->manifest(), changes, *content_, &stats,
                                  [this] { return ShouldStop(); });
  if (!staged.ok()) {
    MC_LOG(error) << "apply of serial " << serial << " failed: " << staged.ToString()
                  << " (tree stays at serial " << state_->serial() << ")";
    applier_->ClearStaging(/*keep_content=*/true);  // what arrived whole is reused next time
    if (!ShouldStop()) Ack(v1::ACK_FAILED, serial, stats, seconds(), staged.ToString());
    return staged;
  }
  Journal journal{serial, digest, changes};
  Status s = state_->WriteJournal(journal);
  if (s.ok()) s = applier_->Commit(changes);
  const v1::Ack applied = MakeAck(v1::ACK_APPLIED, serial, serial, stats, seconds(), "");
  if (s.ok()) {
    s = state_->CommitApply(serial, digest, changes, &applied, DeleteAfter(), std::move(target));
  }
  if (!s.ok()) {
    // The journal stays: the next attempt (or restart) finishes this apply.
    MC_LOG(error) << "commit of serial " << serial << " failed: " << s.ToString();
    Ack(v1::ACK_FAILED, serial, stats, seconds(), s.ToString());
    return s;
  }
  applier_->ClearStaging();
  serial_out_ = serial;
  MC_LOG(info) << "applied repo=" << options_.repo << " serial=" << serial
               << " changes=" << changes.size() << " fetched=" << stats.bytes_fetched
               << " reused=" << stats.bytes_reused << " deltas=" << stats.files_delta
               << " delta_fallbacks=" << stats.delta_fallbacks << " seconds=" << applied.seconds();
  next_ack_try_ = SteadyClock::time_point{};  // the queued ACK goes out right away
  FlushAcks();
  return Status::Ok();
}

void Subscriber::Session::Ack(v1::AckState state, uint64_t target, const ApplyStats& stats,
                              double seconds, const std::string& error) {
  const v1::Ack ack = MakeAck(state, state_->serial(), target, stats, seconds, error);
  // Durable first: an ACK survives a restart until the broker confirms it.
  if (Status s = state_->QueueAck(ack); !s.ok()) {
    MC_LOG(error) << "cannot queue ACK: " << s.ToString();
  }
  next_ack_try_ = SteadyClock::time_point{};  // a new ACK goes out right away
  if (control_) FlushAcks();
}

v1::Ack Subscriber::Session::MakeAck(v1::AckState state, uint64_t serial, uint64_t target,
                                     const ApplyStats& stats, double seconds,
                                     const std::string& error) const {
  v1::Ack ack;
  ack.set_protocol_version(kProtocolVersion);
  ack.set_mirror_id(options_.id);
  ack.set_repo(options_.repo);
  ack.set_serial(serial);
  ack.set_state(state);
  ack.set_target_serial(target);
  ack.set_bytes_fetched(stats.bytes_fetched);
  ack.set_bytes_reused(stats.bytes_reused);
  ack.set_bytes_signature(stats.bytes_signature);
  ack.set_files_changed(stats.files_changed);
  ack.set_seconds(seconds);
  ack.set_error(error.substr(0, 4000));
  ack.set_sent_unix(Clock::Real().NowUnix());
  return ack;
}

void Subscriber::Session::Reject(uint64_t serial, const Status& why) {
  MC_LOG(warning) << "rejected event" << (serial ? " " + std::to_string(serial) : std::string())
                  << ": " << why.ToString() << " (tree unchanged at serial " << state_->serial()
                  << ")";
  if (serial != 0 && serial == last_rejected_) return;  // already reported
  last_rejected_ = serial;
  Ack(v1::ACK_REJECTED, serial, ApplyStats{}, 0.0, why.ToString());
}

void Subscriber::Session::FlushAcks() {
  if (SteadyClock::now() < next_ack_try_) return;
  auto pending = state_->PendingAcks();
  if (!pending.ok()) return;
  for (const auto& [id, ack] : *pending) {
    Status sent = control_->SendAck(ack, Millis(2000));
    if (!sent.ok()) {
      // Retried with backoff; duplicates are harmless (the broker upserts).
      MC_LOG(debug) << "ACK not confirmed yet: " << sent.ToString() << "; retrying in "
                    << ack_backoff_.count() << " ms";
      next_ack_try_ = SteadyClock::now() + ack_backoff_;
      ack_backoff_ = std::min(ack_backoff_ * 2, Millis(30000));
      return;
    }
    state_->DropAck(id);
  }
  ack_backoff_ = Millis(1000);
}

void Subscriber::Session::OnBroadcast(const std::string& envelope, bool* need_sync) {
  v1::Envelope outer;
  if (!outer.ParseFromString(envelope)) {
    Reject(0, Status::Rejected("malformed envelope"));
    return;
  }
  if (trust_.Find(outer.key_id()) == nullptr && heartbeat_trust_.Find(outer.key_id())) {
    // A heartbeat key may sign heartbeats and nothing else.
    auto opened = OpenEnvelope(envelope, heartbeat_trust_);
    if (!opened.ok() || !opened->payload.has_heartbeat()) {
      Reject(0, opened.ok() ? Status::Rejected("heartbeat key signed something else")
                            : opened.status());
      return;
    }
    const v1::Heartbeat& hb = opened->payload.heartbeat();
    const int64_t now = Clock::Real().NowUnix();
    if (hb.expires_unix() != 0 && now > hb.expires_unix()) {
      MC_LOG(warning) << "ignoring expired heartbeat issued at " << hb.issued_unix();
      return;
    }
    if (hb.issued_unix() > now + 300) {
      MC_LOG(warning) << "ignoring heartbeat from the future (clock skew?)";
      return;
    }
    if (hb.issued_unix() < last_heartbeat_issued_) return;  // replayed or reordered
    last_heartbeat_issued_ = hb.issued_unix();
    for (const auto& r : hb.repos()) {
      if (r.repo() == options_.repo && r.serial() > state_->serial()) {
        MC_LOG(info) << "heartbeat says serial " << r.serial() << ", this mirror has "
                     << state_->serial() << ": catching up";
        NoteNewer(r.serial(), need_sync);
      }
    }
    CheckFreshness();
    return;
  }
  auto event = Verify(envelope);
  if (!event.ok()) {
    Reject(0, event.status());
    return;
  }
  if (event->serial() > state_->serial()) NoteNewer(event->serial(), need_sync);
}

void Subscriber::Session::SweepDeletions() {
  // Without a grace period nothing is deferred; a shorter one than before a
  // restart still honours what was recorded.
  const int64_t now = options_.delete_delay.count() > 0 ? Clock::Real().NowUnix() : INT64_MAX;
  auto due = state_->DueDeletions(now);
  if (!due.ok()) {
    MC_LOG(error) << "deferred deletions: " << due.status().ToString();
    return;
  }
  for (const auto& d : *due) {
    if (state_->manifest().Find(d.path) == nullptr) {
      if (Status s = applier_->Remove(d.path, d.kind); !s.ok()) {
        MC_LOG(warning) << "deferred deletion of " << d.path << ": " << s.ToString();
        continue;  // tried again on the next sweep
      }
    }
    state_->DropDeferred(d.path);
  }
  if (!due->empty())
    MC_LOG(debug) << "deleted " << due->size() << " path(s) after the grace period";
}

void Subscriber::Session::CheckFreshness() {
  if (heartbeat_trust_.empty()) return;
  const int64_t now = Clock::Real().NowUnix();
  const int64_t since = last_heartbeat_issued_ ? last_heartbeat_issued_ : started_unix_;
  const bool stale = now - since > options_.stale_after.count();
  if (stale == stale_) return;
  stale_ = stale;
  ApplyStats none;
  if (stale) {
    const std::string why = last_heartbeat_issued_
                                ? "no valid heartbeat for " + std::to_string(now - since) + " s"
                                : "no valid heartbeat since start";
    MC_LOG(warning) << "mirror is stale: " << why << " (limit " << options_.stale_after.count()
                    << " s); the origin may be frozen or unreachable";
    Ack(v1::ACK_STALE, state_->serial(), none, 0.0, why);
  } else {
    MC_LOG(info) << "fresh again: valid heartbeat received";
    Ack(v1::ACK_APPLIED, state_->serial(), none, 0.0, "");
  }
}

void Subscriber::Session::Serve() {
  auto next_sync = SteadyClock::now();  // catch up right away
  auto next_poll = SteadyClock::now() + options_.poll_interval;
  auto next_ack = SteadyClock::now() + Millis(1000);
  auto backoff = std::chrono::duration_cast<Millis>(options_.retry_min);
  bool need_sync = true;
  while (!ShouldStop()) {
    if (need_sync && SteadyClock::now() >= next_sync) {
      Status s = CatchUp();
      if (s.ok()) {
        need_sync = false;
        backoff = std::chrono::duration_cast<Millis>(options_.retry_min);
      } else if (!ShouldStop()) {
        MC_LOG(warning) << "catch-up failed: " << s.ToString() << "; retrying in "
                        << backoff.count() << " ms";
        next_sync = SteadyClock::now() + backoff;
        backoff = std::min(backoff * 2, std::chrono::duration_cast<Millis>(options_.retry_max));
      }
    }
    zmq::pollitem_t item{static_cast<void*>(*events_), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, Millis(200));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) MC_LOG(error) << "poll: " << e.what();
      continue;
    }
    if (item.revents & ZMQ_POLLIN) {
      // Drain everything queued; only the newest serial matters, and the
      // catch-up fetches anything in between from the durable log.
      for (int i = 0; i < 10000; ++i) {
        auto frames = ReceiveMultipart(*events_);
        if (frames.empty()) break;
        if (frames.size() != 2) continue;
        OnBroadcast(frames[1].to_string(), &need_sync);
        if (poked_) {
          // News of a serial not seen before: retry now, whatever the backoff said.
          poked_ = false;
          next_sync = SteadyClock::now();
          backoff = std::chrono::duration_cast<Millis>(options_.retry_min);
        }
      }
    }
    const auto now = SteadyClock::now();
    if (now >= next_poll) {
      // A stale mirror asks more often: the broker may be back on new ports.
      next_poll = now + (stale_ ? std::min<std::chrono::seconds>(options_.poll_interval,
                                                                 std::chrono::seconds(5))
                                : options_.poll_interval);
      auto head = RefreshBroker();
      if (head.ok() && *head > state_->serial()) need_sync = true;
    }
    if (now >= next_ack) {
      next_ack = now + Millis(1000);
      FlushAcks();
      CheckFreshness();
      SweepDeletions();
    }
  }
}

Subscriber::Subscriber(SubscriberOptions options) : options_(std::move(options)) {
  if (options_.id.empty()) options_.id = "mirror";
}

Subscriber::~Subscriber() { Stop(); }

Status Subscriber::Start() {
  stop_ = false;
  session_ = std::make_unique<Session>(options_, stop_, serial_);
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

void Subscriber::Loop() {
  Status s = session_->Init();
  if (!s.ok()) {
    if (!stop_) MC_LOG(error) << "cannot start: " << s.ToString();
    stop_ = true;
    return;
  }
  session_->Serve();
}

void Subscriber::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  session_.reset();
}

int Subscriber::Run() {
  Start();
  while (!StopRequested() && !stop_.load()) std::this_thread::sleep_for(Millis(100));
  const bool failed = stop_.load() && !StopRequested();
  if (!failed) MC_LOG(info) << "stopping";
  Stop();
  return failed ? 1 : 0;
}

Result<SyncReport> Subscriber::SyncOnce() {
  stop_ = false;
  session_ = std::make_unique<Session>(options_, stop_, serial_);
  MC_RETURN_IF_ERROR(session_->Init(/*once=*/true));
  const uint64_t before = serial_.load();
  Status s = session_->CatchUp();
  session_->FlushAcks();
  session_.reset();
  MC_RETURN_IF_ERROR(s);
  return SyncReport{serial_.load(), serial_.load() - before};
}

}  // namespace mirrorcast
