#include "core/mirror/follower.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <map>
#include <system_error>

#include "core/base/format.h"
#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/manifest/hash_cache.h"
#include "core/manifest/scanner.h"
#include "core/mirror/trace_files.h"
#include "core/mirror/tree_binding.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

namespace fs = std::filesystem;
using Millis = std::chrono::milliseconds;

namespace {

// Distinct refusal reasons remembered per run (each is reported once).
constexpr size_t kMaxReportedRefusals = 1024;

constexpr Millis kControlTimeout{5000};
constexpr uint32_t kEventsPerRequest = 100;

// Replaying more events than this costs more than one manifest download.
constexpr size_t kMaxReplayChanges = 200000;

// A jump's change list up to this size is held in memory (an update's fast
// path); a larger one (a bootstrap, a long outage) goes to the journal's
// table as the diff produces it, and is staged and committed from there.
constexpr size_t kMaxChangesInMemory = 20000;

// A recall is applied like any event; the mirror's log says what it is.
void LogRecall(const v1::RepoChanged& event) {
  if (event.recall_of() == 0) return;
  MC_LOG(warning) << "serial " << event.serial() << " of " << event.repo()
                  << " is a recall of serial " << event.recall_of() << ": "
                  << EscapeForLog(event.recall_reason(), 256) << "; applying it";
}

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

Result<fs::path> ChooseStaging(const fs::path& state, const fs::path& tree,
                               const std::optional<fs::path>& override) {
  fs::path staging;
  if (override) {
    staging = *override;
  } else {
    MC_ASSIGN_OR_RETURN(bool same, SameFilesystem(state, tree));
    staging = same ? state / "staging" : tree / ".mirrorcast-staging";
  }
  std::error_code ec;
  fs::create_directories(staging, ec);
  if (ec) return Status::IoError("create " + staging.string() + ": " + ec.message());
  MC_RETURN_IF_ERROR(CheckRenameWorks(staging, tree));
  return staging;
}

Result<std::unique_ptr<Follower>> Follower::Open(FollowerOptions options, KeyTrust trust) {
  std::unique_ptr<Follower> follower(new Follower(std::move(options), std::move(trust)));
  MC_RETURN_IF_ERROR(follower->Init());
  return follower;
}

Status Follower::Init() {
  MC_RETURN_IF_ERROR(ValidateRepoName(options_.repo));
  std::error_code ec;
  fs::create_directories(options_.tree, ec);
  if (ec) return Status::IoError("create tree " + options_.tree.string() + ": " + ec.message());
  MC_ASSIGN_OR_RETURN(state_, MirrorState::Open(options_.state, options_.repo));
  MC_RETURN_IF_ERROR(BindStateToTree(options_.state, options_.tree));
  if (trust_.rooted()) {
    // The newest key set this mirror accepted: an older one offered after
    // a restart is refused against it.
    MC_ASSIGN_OR_RETURN(auto stored, state_->StoredKeySet());
    if (stored) MC_RETURN_IF_ERROR(trust_.AdoptStored(*stored));
    state_->set_keyset_version(trust_.version());
    MC_LOG(info) << "trust: " << trust_.Describe();
  }

  ApplierOptions apply;
  apply.tree = options_.tree;
  MC_ASSIGN_OR_RETURN(apply.staging,
                      ChooseStaging(options_.state, options_.tree, options_.staging));
  if (!options_.metadata_patterns.empty()) {
    apply.metadata = MetadataMatcher(options_.metadata_patterns);
  }
  apply.delta_min_bytes = options_.delta_min_bytes;
  apply.defer_deletions = options_.delete_delay.count() > 0;
  apply.after_signature = options_.after_signature;
  apply.clock = options_.clock;
  apply.progress = [this](const FetchProgress& p) { ReportProgress(p); };
  applier_ = std::make_unique<Applier>(std::move(apply));

  // An apply interrupted after staging: finish it before anything else. If
  // that fails now (disk still full?), the staged files and the journal stay
  // and every catch-up tries again; the owner keeps running meanwhile.
  if (Status resumed = ResumeJournal(); !resumed.ok()) {
    MC_LOG(error) << "cannot finish the interrupted apply yet: " << resumed.ToString()
                  << " (retrying; clients still see a consistent tree)";
  } else {
    // Content an interrupted Stage already fetched stays for reuse; a change
    // list stored for it is made again by the next jump.
    MC_RETURN_IF_ERROR(applier_->ClearStaging(/*keep_content=*/true));
    MC_RETURN_IF_ERROR(state_->ClearStoredChanges());
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
  return Status::Ok();
}

int64_t Follower::DeleteAfter() const {
  const auto delay = options_.delete_delay.count();
  return delay > 0 ? clock().NowUnix() + delay : 0;
}

Status Follower::ResumeJournal() {
  MC_ASSIGN_OR_RETURN(auto journal, state_->ReadJournal());
  if (!journal) return Status::Ok();
  MC_LOG(warning) << "finishing interrupted apply of serial " << journal->serial;
  const v1::Ack ack =
      MakeAck(v1::ACK_APPLIED, journal->serial, journal->serial, ApplyStats{}, 0.0, "");
  if (journal->stored) {
    // A large change list: read back from the state, as is the manifest it
    // leads to (its root was checked against the signed one before the
    // journal was written, and is checked again here).
    auto index = ManifestIndex::Decode(journal->target_index);
    if (!index.ok() || index->Root() != journal->manifest_sha256) {
      return Status::Corruption("journal of serial " + std::to_string(journal->serial) +
                                ": its manifest index does not match its root");
    }
    ChangeList& changes = state_->stored_changes();
    MC_RETURN_IF_ERROR(applier_->Commit(changes).WithContext("resume apply"));
    MC_RETURN_IF_ERROR(state_->CommitApply(journal->serial, journal->manifest_sha256, changes, &ack,
                                           DeleteAfter(),
                                           AppliedManifest{*index, &state_->fetched_chunks()}));
  } else {
    MC_RETURN_IF_ERROR(applier_->Commit(journal->changes).WithContext("resume apply"));
    MC_RETURN_IF_ERROR(state_->CommitApply(journal->serial, journal->manifest_sha256,
                                           journal->changes, &ack, DeleteAfter()));
  }
  MC_LOG(info) << "resumed apply done: repo=" << options_.repo << " serial=" << journal->serial;
  if (on_applied) on_applied(journal->serial);
  if (on_ack_queued) on_ack_queued();
  return applier_->ClearStaging();
}

Result<v1::RepoChanged> Follower::Verify(const std::string& envelope) const {
  return Verify(envelope, clock().NowUnix());
}

Result<v1::RepoChanged> Follower::Verify(const std::string& envelope, int64_t now_unix) const {
  MC_ASSIGN_OR_RETURN(OpenedEnvelope opened, trust_.OpenEvent(envelope, now_unix));
  v1::RepoChanged event = std::move(*opened.payload.mutable_repo_changed());
  if (event.repo() != options_.repo) {
    return Status::Rejected("event for repo '" + EscapeForLog(event.repo(), 64) + "', expected '" +
                            options_.repo + "'");
  }
  MC_RETURN_IF_ERROR(CheckRepoChanged(event, now_unix));
  return event;
}

Status Follower::OfferKeySet(const std::string& signed_bytes) {
  if (!trust_.rooted() || signed_bytes.empty()) return Status::Ok();
  auto set = trust_.Check(signed_bytes, clock().NowUnix());
  if (!set.ok()) {
    if (set.status().code() == Status::Code::kAlreadyExists) return Status::Ok();
    return Refuse(0, set.status().WithContext("key set from the broker"));
  }
  // Fast-forward recovery: a serial accepted under a key set older than the
  // reset's since_version, above its floor, is void (it may have been
  // inflated by a key this set revokes). The tree stays; the next serial
  // above the floor brings it back to the honest history.
  std::optional<uint64_t> reset;
  if (auto r = set->ResetFor(options_.repo); r && state_->initialized() &&
                                             state_->serial() > r->floor() &&
                                             state_->serial_keyset_version() < r->since_version()) {
    reset = r->floor();
  }
  const uint64_t before = state_->serial();
  const uint64_t under = state_->serial_keyset_version();
  MC_RETURN_IF_ERROR(state_->StoreKeySet(set->version(), set->bytes(), reset));
  MC_LOG(info) << "accepted key set version " << set->version() << " (was " << trust_.version()
               << ")";
  if (reset) {
    MC_LOG(warning) << "key set version " << set->version() << " resets repo " << options_.repo
                    << ": serial " << before << " was accepted under key set version " << under
                    << " < " << set->ResetFor(options_.repo)->since_version()
                    << "; recorded serial is now " << *reset
                    << " (tree kept; the next serial above it repairs it)";
  }
  trust_.Adopt(std::move(*set));
  if (reset && on_applied) on_applied(state_->serial());
  return Status::Ok();
}

Status Follower::CheckForward(uint64_t serial, const std::string& digest) const {
  const uint64_t local = state_->serial();
  if (serial > local) return Status::Ok();
  if (serial < local) {
    return Status::Rejected("rollback: serial " + std::to_string(serial) +
                            " is older than this mirror's serial " + std::to_string(local));
  }
  if (digest == state_->digest()) {
    return Status::AlreadyExists("serial " + std::to_string(serial) + " is already applied");
  }
  return Status::Rejected("conflict: serial " + std::to_string(serial) +
                          " is already applied here with manifest " +
                          ToHex(state_->digest()).substr(0, 16) + ", the broker offers manifest " +
                          ToHex(digest).substr(0, 16));
}

Status Follower::CatchUp(BrokerLink& broker, const std::function<bool()>& should_stop) {
  auto stopping = [&] { return should_stop && should_stop(); };
  MC_RETURN_IF_ERROR(ResumeJournal());
  SweepDeletions();
  for (;;) {
    if (stopping()) return Status::Unavailable("stopping");
    MC_RETURN_IF_ERROR(broker.Head().status());
    const uint64_t local = state_->serial();
    // One verification pass, one time: every expiry and skew check of the
    // events this pass looks at is judged against the same `now`.
    const int64_t now = clock().NowUnix();
    MC_ASSIGN_OR_RETURN(
        v1::EventsReply reply,
        broker.control().Events(options_.repo, local, kEventsPerRequest, kControlTimeout));
    if (reply.latest_serial() <= local) {
      if (reply.latest_serial() < local) {
        // A broker restored from an old backup, or one replaying history:
        // this mirror keeps its newer tree, and says so (once).
        Reject(reply.latest_serial(),
               Status::Rejected("broker's head is serial " + std::to_string(reply.latest_serial()) +
                                ", older than this mirror's serial " + std::to_string(local) +
                                "; keeping the newer tree"));
      }
      return Status::Ok();
    }
    // Verify what the log gives; stop at the first bad event. Every event
    // must move forward from this mirror's serial, in strictly increasing
    // order: an older or conflicting one is refused, never applied.
    std::vector<v1::RepoChanged> chain;
    const std::string* last_envelope = nullptr;  // chain.back()'s signed bytes
    size_t total_changes = 0;
    bool omitted = false;
    for (const auto& envelope : reply.envelopes()) {
      auto event = Verify(envelope, now);
      if (!event.ok()) return Refuse(0, event.status());
      const uint64_t after = chain.empty() ? local : chain.back().serial();
      if (Status forward = CheckForward(event->serial(), event->manifest_sha256()); !forward.ok()) {
        if (forward.code() == Status::Code::kAlreadyExists && chain.empty()) continue;
        return Refuse(event->serial(), forward.WithContext("catch-up"));
      }
      if (event->serial() <= after) {
        return Refuse(event->serial(),
                      Status::Rejected("catch-up: event " + std::to_string(event->serial()) +
                                       " follows event " + std::to_string(after) +
                                       " in the broker's log (out of order)"));
      }
      total_changes += static_cast<size_t>(event->change_count());
      omitted = omitted || event->changes_omitted();
      chain.push_back(std::move(*event));
      last_envelope = &envelope;
    }
    const bool contiguous = !chain.empty() && chain.front().previous_serial() == local;
    if (contiguous && omitted && !reply.gap()) {
      // A change list too large to carry: diff the manifest of the newest
      // event the log gave against this mirror's (verified chunk by chunk).
      applying_envelope_ = *last_envelope;
      MC_RETURN_IF_ERROR(JumpTo(broker, chain.back(), should_stop));
      continue;
    }
    if (contiguous && !reply.gap() && total_changes <= kMaxReplayChanges) {
      applying_envelope_ = *last_envelope;
      Status s = ApplyChain(broker, chain, should_stop);
      if (s.ok()) continue;  // more may have arrived meanwhile
      if (s.code() != Status::Code::kFailedPrecondition) return s;
      MC_LOG(warning) << s.message() << "; jumping to the latest signed manifest";
    }
    // Too far behind, or the log does not fit this tree: jump to the latest.
    MC_ASSIGN_OR_RETURN(
        v1::EventsReply latest,
        broker.control().Events(options_.repo, reply.latest_serial() - 1, 1, kControlTimeout));
    if (latest.envelopes_size() == 0) return Status::Unavailable("broker has no latest event");
    auto event = Verify(latest.envelopes(0), now);
    if (!event.ok()) return Refuse(0, event.status());
    // The broker said its head is reply.latest_serial(): what it serves as
    // the head must be newer than this mirror (a replayed older event would
    // roll the tree back), and every jump must make progress.
    if (Status forward = CheckForward(event->serial(), event->manifest_sha256()); !forward.ok()) {
      return Refuse(
          event->serial(),
          Status::Rejected("jump to the broker's head (said to be serial " +
                           std::to_string(reply.latest_serial()) + "): " + forward.message()));
    }
    applying_envelope_ = latest.envelopes(0);
    MC_RETURN_IF_ERROR(JumpTo(broker, *event, should_stop));
  }
}

Status Follower::ApplyChain(BrokerLink& broker, const std::vector<v1::RepoChanged>& chain,
                            const std::function<bool()>& should_stop) {
  // Each signed change list must take the manifest to its signed root
  // (mix-and-match defence) before any byte is fetched; only the chunks the
  // changes fall in are read. A mirror whose tree differs (adopted from a
  // scan, or repaired) jumps to the manifest instead.
  MemoryChunks derived(&state_->chunks());
  auto keep = [&](const ChunkRef& ref, std::string bytes) {
    derived.Put(ref.id, std::move(bytes));
    return Status::Ok();
  };
  ManifestIndex index = state_->index();
  for (const auto& event : chain) {
    auto next = ApplyChangesToIndex(index, derived, event.changes(), keep);
    if (!next.ok() || next->Root() != event.manifest_sha256()) {
      return Status::FailedPrecondition(
          "event " + std::to_string(event.serial()) +
          " does not fit this mirror's tree at serial " + std::to_string(state_->serial()) +
          (next.ok() ? " (manifest root differs)" : ": " + next.status().message()));
    }
    index = std::move(*next);
  }
  for (const auto& event : chain) LogRecall(event);
  // Several serials behind: the chain is squashed into one apply of its net
  // change list, so content replaced in between is never fetched.
  const v1::RepoChanged& last = chain.back();
  std::vector<v1::Change> changes;
  if (chain.size() == 1) {
    changes.assign(last.changes().begin(), last.changes().end());
  } else {
    MC_RETURN_IF_ERROR(
        DiffIndexes(state_->index(), state_->chunks(), index, derived, [&](v1::Change c) {
          changes.push_back(std::move(c));
          return Status::Ok();
        }));
  }
  ChangeVector list(changes, applier_->options().metadata);
  return ApplyChanges(broker, last.serial(), last.manifest_sha256(),
                      AppliedManifest{std::move(index), &derived}, list, &changes, should_stop);
}

namespace {

// Manifest chunks fetched from a broker's content socket as they are asked
// for (each checked against its id by the reader), kept in the state (not in
// memory: a million-entry manifest is a hundred MB of chunks) for the record.
class FetchedChunks : public ChunkSource {
 public:
  FetchedChunks(ContentClient& content, MirrorState& state) : content_(content), state_(state) {}
  Result<std::string> LoadChunk(std::string_view id) override {
    if (auto mine = state_.chunks().LoadChunk(id); mine.ok()) return mine;
    if (auto have = state_.fetched_chunks().LoadChunk(id); have.ok()) return have;
    MC_ASSIGN_OR_RETURN(std::string bytes,
                        content_.FetchManifestObject(std::string(id), kMaxChunkBytes, &stats));
    MC_RETURN_IF_ERROR(state_.PutFetchedChunk(std::string(id), bytes));
    return bytes;
  }
  FetchStats stats;

 private:
  ContentClient& content_;
  MirrorState& state_;
};

}  // namespace

Status Follower::JumpTo(BrokerLink& broker, const v1::RepoChanged& event,
                        const std::function<bool()>& should_stop) {
  if (Status forward = CheckForward(event.serial(), event.manifest_sha256()); !forward.ok()) {
    return Refuse(event.serial(), forward.WithContext("jump"));
  }
  FetchStats stats;
  auto fail = [&](const Status& why) {
    ApplyStats none;
    none.bytes_fetched = stats.bytes_fetched;
    Ack(v1::ACK_FAILED, event.serial(), none, 0.0,
        "manifest " + std::to_string(event.serial()) + ": " + why.ToString());
    return why;
  };
  // The index is named by the signed root: what arrives is what was signed.
  auto mismatch = [&](const Status& why) {
    Status rejected =
        Status::Rejected("manifest of serial " + std::to_string(event.serial()) +
                         " does not match the signed event (mix-and-match): " + why.message());
    Reject(event.serial(), rejected);
    return rejected;
  };
  auto bytes =
      broker.content().FetchManifestObject(event.manifest_sha256(), kMaxIndexBytes, &stats);
  if (!bytes.ok()) {
    return bytes.status().code() == Status::Code::kCorruption ? mismatch(bytes.status())
                                                              : fail(bytes.status());
  }
  auto target = ManifestIndex::Decode(*bytes);
  if (!target.ok()) return mismatch(target.status());
  if (target->entries() != event.manifest_entries()) {
    return mismatch(Status::Corruption("it has " + std::to_string(target->entries()) +
                                       " entries, the event " +
                                       std::to_string(event.manifest_entries())));
  }
  FetchedChunks remote(broker.content(), *state_);
  MC_RETURN_IF_ERROR(state_->ClearStoredChanges());
  // The diff goes to memory while it is small, to the journal's table once
  // it is not (every path checked as it passes, before a byte is fetched).
  std::vector<v1::Change> changes;
  bool stored = false;
  const MetadataMatcher& metadata = applier_->options().metadata;
  Status diffed =
      DiffIndexes(state_->index(), state_->chunks(), *target, remote, [&](v1::Change c) {
        MC_RETURN_IF_ERROR(Applier::CheckPath(c.entry().path()));
        if (stored) return state_->StoreChange(c, StepOf(c, metadata));
        changes.push_back(std::move(c));
        if (changes.size() <= kMaxChangesInMemory) return Status::Ok();
        stored = true;
        for (const v1::Change& held : changes) {
          MC_RETURN_IF_ERROR(state_->StoreChange(held, StepOf(held, metadata)));
        }
        changes.clear();
        changes.shrink_to_fit();
        return Status::Ok();
      });
  if (diffed.ok()) diffed = state_->FinishStoredChanges();
  stats.bytes_fetched += remote.stats.bytes_fetched;
  if (!diffed.ok()) {
    return diffed.code() == Status::Code::kCorruption ? mismatch(diffed) : fail(diffed);
  }
  ChangeVector in_memory(changes, metadata);
  ChangeList& list = stored ? state_->stored_changes() : in_memory;
  LogRecall(event);
  MC_LOG(info) << "jumping from serial " << state_->serial() << " to " << event.serial() << " ("
               << list.size() << " changes" << (stored ? ", journaled as they came" : "") << ", "
               << target->refs.size() << " manifest chunks)";
  return ApplyChanges(broker, event.serial(), event.manifest_sha256(),
                      AppliedManifest{std::move(*target), &remote}, list,
                      stored ? nullptr : &changes, should_stop);
}

Status Follower::ApplyChanges(BrokerLink& broker, uint64_t serial, const std::string& digest,
                              const AppliedManifest& target, ChangeList& list,
                              const std::vector<v1::Change>* changes,
                              const std::function<bool()>& should_stop) {
  if (serial <= state_->serial()) {
    // Every caller checked CheckForward; this is the last line before the tree.
    return Status::Internal("apply of serial " + std::to_string(serial) + " at serial " +
                            std::to_string(state_->serial()) + ": serials never go backwards");
  }
  const auto started = clock().Steady();
  const int64_t started_unix = clock().NowUnix();
  applying_serial_ = serial;
  const uint64_t total = list.size();
  ApplyStats stats;
  auto seconds = [&] { return std::chrono::duration<double>(clock().Steady() - started).count(); };
  Status staged = changes
                      ? applier_->Stage(*state_, *changes, &broker.content(), &stats, should_stop)
                      : applier_->Stage(*state_, list, &broker.content(), &stats, should_stop);
  if (!staged.ok()) {
    MC_LOG(error) << "apply of serial " << serial << " failed: " << staged.ToString()
                  << " (tree stays at serial " << state_->serial() << ")";
    // What arrived whole is reused next time.
    if (Status cleared = applier_->ClearStaging(/*keep_content=*/true); !cleared.ok()) {
      MC_LOG(warning) << "cannot clear staging: " << cleared.ToString();
    }
    if (!(should_stop && should_stop())) {
      Ack(v1::ACK_FAILED, serial, stats, seconds(), staged.ToString());
    }
    return staged;
  }
  Journal journal;
  journal.serial = serial;
  journal.manifest_sha256 = digest;
  if (changes) {
    journal.changes = *changes;
  } else {
    journal.stored = true;
    journal.target_index = target.index.Encode();
  }
  // The signed envelope of what is applied, kept before the tree changes (a
  // relay re-publishes it once the apply is recorded, after a crash too).
  Status s =
      applying_envelope_.empty() ? Status::Ok() : state_->StoreEnvelope(serial, applying_envelope_);
  if (s.ok()) s = state_->WriteJournal(journal);
  if (s.ok()) s = applier_->Commit(list);
  const v1::Ack applied = MakeAck(v1::ACK_APPLIED, serial, serial, stats, seconds(), "");
  if (s.ok()) {
    s = changes ? state_->CommitApply(serial, digest, *changes, &applied, DeleteAfter(), target)
                : state_->CommitApply(serial, digest, list, &applied, DeleteAfter(), target);
  }
  if (!s.ok()) {
    // The journal stays: the next attempt (or restart) finishes this apply.
    MC_LOG(error) << "commit of serial " << serial << " failed: " << s.ToString();
    Ack(v1::ACK_FAILED, serial, stats, seconds(), s.ToString());
    return s;
  }
  if (Status cleared = applier_->ClearStaging(); !cleared.ok()) {
    MC_LOG(warning) << "cannot clear staging: " << cleared.ToString();
  }
  MC_LOG(info) << "applied repo=" << options_.repo << " serial=" << serial << " changes=" << total
               << " fetched=" << stats.bytes_fetched << " reused=" << stats.bytes_reused
               << " deltas=" << stats.files_delta << " delta_fallbacks=" << stats.delta_fallbacks
               << " seconds=" << applied.seconds();
  WriteTrace(broker.control().broker().ToString(), serial, started_unix, stats.bytes_fetched);
  if (on_applied) on_applied(serial);
  if (on_ack_queued) on_ack_queued();  // the queued ACK goes out right away
  return Status::Ok();
}

void Follower::WriteTrace(const std::string& upstream, uint64_t serial, int64_t started_unix,
                          uint64_t bytes_fetched) {
  if (options_.trace_name.empty()) return;
  TraceInfo info;
  info.name = options_.trace_name;
  info.repo = options_.repo;
  info.serial = serial;
  info.started_unix = started_unix;
  info.applied_unix = clock().NowUnix();
  info.upstream = upstream;
  info.bytes_fetched = bytes_fetched;
  Status s = WriteTraceFiles(options_.tree, info, [this](const std::string& path) {
    auto entry = state_->Find(path);
    return !entry.ok() || entry->has_value();  // the origin's own: left alone
  });
  if (!s.ok() && !trace_failed_) {
    MC_LOG(warning) << "cannot write the trace files (project/trace/" << options_.trace_name
                    << ", lastsync): " << s.ToString() << " (the tree is applied; logged once)";
  } else if (s.ok() && trace_failed_) {
    MC_LOG(info) << "trace files written again";
  }
  trace_failed_ = !s.ok();
}

void Follower::ReportProgress(const FetchProgress& p) {
  const double rate = p.seconds > 0 ? static_cast<double>(p.bytes_done) / p.seconds : 0;
  const double files_rate = p.seconds > 0 ? static_cast<double>(p.files_done) / p.seconds : 0;
  const double left_files =
      static_cast<double>(p.files_total - std::min(p.files_done, p.files_total));
  const double left_bytes =
      static_cast<double>(p.bytes_total - std::min(p.bytes_done, p.bytes_total));
  // Small files are bound by their count, large ones by their bytes.
  const double eta =
      std::max(files_rate > 0 ? left_files / files_rate : 0, rate > 0 ? left_bytes / rate : 0);
  const double pct = p.bytes_total > 0 ? 100.0 * static_cast<double>(p.bytes_done) /
                                             static_cast<double>(p.bytes_total)
                                       : 100.0;
  char line[256];
  std::snprintf(
      line, sizeof line,
      "%s serial %llu: %llu of %llu files, %s of %s (%.0f%%), %s/s, %.0f files/s%s",
      p.finished ? "fetched for" : "fetching for",
      static_cast<unsigned long long>(applying_serial_),
      static_cast<unsigned long long>(p.files_done), static_cast<unsigned long long>(p.files_total),
      HumanBytes(static_cast<double>(p.bytes_done)).c_str(),
      HumanBytes(static_cast<double>(p.bytes_total)).c_str(), pct, HumanBytes(rate).c_str(),
      files_rate,
      p.finished ? "" : (", ETA " + std::to_string(static_cast<long long>(eta)) + " s").c_str());
  MC_LOG(info) << line;
  if (p.finished) return;
  // The broker's status shows the apply in progress, with what it fetched so far.
  ApplyStats so_far;
  so_far.bytes_fetched = p.bytes_done;
  so_far.files_changed = p.files_done;
  Ack(v1::ACK_IN_PROGRESS, applying_serial_, so_far, p.seconds, line);
}

void Follower::Ack(v1::AckState state, uint64_t target, const ApplyStats& stats, double seconds,
                   const std::string& error) {
  const v1::Ack ack = MakeAck(state, state_->serial(), target, stats, seconds, error);
  // Durable first: an ACK survives a restart until the broker confirms it.
  if (Status s = state_->QueueAck(ack); !s.ok()) {
    MC_LOG(error) << "cannot queue ACK: " << s.ToString();
  }
  if (on_ack_queued) on_ack_queued();
}

v1::Ack Follower::MakeAck(v1::AckState state, uint64_t serial, uint64_t target,
                          const ApplyStats& stats, double seconds, const std::string& error) const {
  v1::Ack ack;
  ack.set_protocol_version(kProtocolVersion);
  ack.set_mirror_id(options_.mirror_id);
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
  ack.set_sent_unix(clock().NowUnix());
  return ack;
}

void Follower::Reject(uint64_t serial, const Status& why) { (void)Refuse(serial, why); }

Status Follower::Refuse(uint64_t serial, const Status& why) {
  // The reason may quote a peer: escaped and capped before it is logged,
  // recorded or ACKed.
  const std::string reason = EscapeForLog(why.ToString(), 1024);
  if (reported_.count(reason) != 0) {
    // Already logged, recorded and ACKed: a refusal repeated on every retry
    // must not become a log flood, a durable write or an ACK each time.
    MC_LOG(debug) << "refused again: " << reason;
    return why;
  }
  if (reported_.size() >= kMaxReportedRefusals) reported_.clear();
  reported_.insert(reason);
  MC_LOG(warning) << "refused" << (serial ? " serial " + std::to_string(serial) : std::string())
                  << ": " << reason << " (tree unchanged at serial " << state_->serial() << ")";
  if (Status s = state_->RecordRefusal(serial, reason, clock().NowUnix()); !s.ok()) {
    MC_LOG(error) << "cannot record the refusal in the state: " << s.ToString();
  }
  Ack(v1::ACK_REJECTED, serial, ApplyStats{}, 0.0, reason);
  return why;
}

void Follower::SweepDeletions() {
  // Without a grace period nothing is deferred; a shorter one than before a
  // restart still honours what was recorded.
  const int64_t now = options_.delete_delay.count() > 0 ? clock().NowUnix() : INT64_MAX;
  auto due = state_->DueDeletions(now);
  if (!due.ok()) {
    MC_LOG(error) << "deferred deletions: " << due.status().ToString();
    return;
  }
  for (const auto& d : *due) {
    auto now_there = state_->Find(d.path);
    if (!now_there.ok()) {
      MC_LOG(warning) << "deferred deletion of " << d.path << ": " << now_there.status().ToString();
      continue;
    }
    if (!now_there->has_value()) {
      if (Status s = applier_->Remove(d.path, d.kind); !s.ok()) {
        MC_LOG(warning) << "deferred deletion of " << d.path << ": " << s.ToString();
        continue;  // tried again on the next sweep
      }
    }
    if (Status s = state_->DropDeferred(d.path); !s.ok()) {
      MC_LOG(warning) << "deferred deletion of " << d.path << ": " << s.ToString();
    }
  }
  if (!due->empty())
    MC_LOG(debug) << "deleted " << due->size() << " path(s) after the grace period";
}

}  // namespace mirrorcast
