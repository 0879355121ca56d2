#include "publisher/publisher.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <system_error>

#include "core/base/format.h"
#include "core/base/log.h"
#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"
#include "core/manifest/chunks.h"
#include "core/manifest/hash_cache.h"
#include "core/manifest/manifest.h"
#include "core/manifest/tree_diff.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/publish_client.h"
#include "core/store/sqlite.h"
#include "core/wire/envelope.h"

namespace mirrorcast {
namespace {

constexpr int64_t kSecondsPerDay = 24 * 60 * 60;
constexpr int kMaxExpiryDays = 3650;

std::filesystem::path StateManifestPath(const PublisherOptions& options) {
  return options.state_dir / (options.repo + ".manifest.db");
}

std::filesystem::path HashCachePath(const PublisherOptions& options) {
  return options.state_dir / (options.repo + ".hashcache.db");
}

Status CheckOptions(const PublisherOptions& options) {
  if (Status s = ValidateRepoName(options.repo); !s.ok()) {
    return Status::InvalidArgument("bad --repo '" + options.repo + "': " + s.message());
  }
  if (options.broker.host.empty() || options.broker.port == 0) {
    return Status::InvalidArgument("bad --broker '" + options.broker.ToString() +
                                   "': need HOST:PORT with a non-zero port");
  }
  if (options.expiry_days < 1 || options.expiry_days > kMaxExpiryDays) {
    return Status::InvalidArgument("bad --expiry-days " + std::to_string(options.expiry_days) +
                                   ": must be 1.." + std::to_string(kMaxExpiryDays));
  }
  if (options.timeout.count() <= 0) {
    return Status::InvalidArgument("bad --timeout: must be positive");
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(options.tree, ec)) {
    return Status::InvalidArgument("tree " + options.tree.string() + " is not a directory" +
                                   (ec ? " (" + ec.message() + ")" : ""));
  }
  std::filesystem::create_directories(options.state_dir, ec);
  if (ec || !std::filesystem::is_directory(options.state_dir)) {
    return Status::InvalidArgument("cannot use state directory " + options.state_dir.string() +
                                   (ec ? ": " + ec.message() : ""));
  }
  return Status::Ok();
}

// Network failures keep their code (exit 3) but get a message naming the broker.
Status BrokerFailure(const Status& s, const PublisherOptions& options, std::string_view what) {
  return DescribeBrokerFailure(s, options.broker, what, options.timeout);
}

// The publisher's copy of the last manifest it saw confirmed
// (<state>/<repo>.manifest.db): the manifest index with its root and serial,
// and the chunks it names, so the next publish re-derives the new root from
// the few chunks its changes fall in.
class ManifestState : public ChunkSource {
 public:
  static Result<std::unique_ptr<ManifestState>> Open(const std::filesystem::path& path) {
    MC_ASSIGN_OR_RETURN(auto db, Database::Open(path));
    // A copy that loses its last commit to a power cut no longer matches the
    // broker's serial and is fetched back from the broker (WAL stays
    // consistent): no fsync on every commit.
    MC_RETURN_IF_ERROR(db->Exec("PRAGMA synchronous=NORMAL"));
    MC_RETURN_IF_ERROR(db->Exec(R"sql(
      CREATE TABLE IF NOT EXISTS head(
        id INTEGER PRIMARY KEY CHECK (id = 1), serial INTEGER NOT NULL,
        root BLOB NOT NULL, manifest_index BLOB NOT NULL);
      CREATE TABLE IF NOT EXISTS chunks(id BLOB PRIMARY KEY, bytes BLOB NOT NULL);
    )sql"));
    std::unique_ptr<ManifestState> state(new ManifestState(std::move(db)));
    MC_ASSIGN_OR_RETURN(Statement st,
                        state->db_->Prepare("SELECT serial, root, manifest_index FROM head"));
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (row) {
      auto index = ManifestIndex::Decode(st.ColumnBlob(2));
      if (index.ok() && index->Root() == st.ColumnBlob(1)) {
        state->serial_ = static_cast<uint64_t>(st.ColumnInt(0));
        state->index_ = std::move(*index);
        state->valid_ = true;
      } else {
        MC_LOG(warning) << "ignoring a damaged manifest index in " << path.string();
      }
    }
    return state;
  }

  // Whether this is exactly the broker's latest manifest.
  bool Matches(uint64_t serial, const std::string& root) const {
    return valid_ && serial_ == serial && index_.Root() == root;
  }
  const ManifestIndex& index() const { return index_; }
  bool valid() const { return valid_; }
  uint64_t serial() const { return serial_; }

  Result<std::string> LoadChunk(std::string_view id) override {
    MC_ASSIGN_OR_RETURN(Statement st, db_->Prepare("SELECT bytes FROM chunks WHERE id = ?"));
    st.BindBlob(1, id);
    MC_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) return Status::NotFound("manifest chunk " + ToHex(id) + " is not in the state");
    return st.ColumnBlob(0);
  }

  // Records `index` at `serial`, taking the chunks it lacks from `from` and
  // dropping those no longer named, in one transaction.
  Status Save(uint64_t serial, const ManifestIndex& index, ChunkSource& from) {
    std::set<std::string> old_ids, new_ids;
    if (valid_) {
      for (const auto& r : index_.refs) old_ids.insert(r.id);
    }
    for (const auto& r : index.refs) new_ids.insert(r.id);
    Transaction tx(*db_);
    MC_RETURN_IF_ERROR(tx.status());
    if (!valid_) MC_RETURN_IF_ERROR(db_->Exec("DELETE FROM chunks"));
    {
      MC_ASSIGN_OR_RETURN(Statement put,
                          db_->Prepare("INSERT OR IGNORE INTO chunks(id, bytes) VALUES(?, ?)"));
      for (const auto& r : index.refs) {
        if (old_ids.count(r.id)) continue;
        MC_ASSIGN_OR_RETURN(std::string bytes, from.LoadChunk(r.id));
        put.Reset();
        put.BindBlob(1, r.id).BindBlob(2, bytes);
        MC_RETURN_IF_ERROR(put.Run());
      }
      MC_ASSIGN_OR_RETURN(Statement drop, db_->Prepare("DELETE FROM chunks WHERE id = ?"));
      for (const auto& id : old_ids) {
        if (new_ids.count(id)) continue;
        drop.Reset();
        drop.BindBlob(1, id);
        MC_RETURN_IF_ERROR(drop.Run());
      }
      MC_ASSIGN_OR_RETURN(Statement head,
                          db_->Prepare("INSERT OR REPLACE INTO head(id, serial, root, "
                                       "manifest_index) VALUES(1, ?, ?, ?)"));
      head.Bind(1, static_cast<int64_t>(serial))
          .BindBlob(2, index.Root())
          .BindBlob(3, index.Encode());
      MC_RETURN_IF_ERROR(head.Run());
    }
    MC_RETURN_IF_ERROR(tx.Commit());
    serial_ = serial;
    index_ = index;
    valid_ = true;
    return Status::Ok();
  }

 private:
  explicit ManifestState(std::unique_ptr<Database> db) : db_(std::move(db)) {}
  std::unique_ptr<Database> db_;
  uint64_t serial_ = 0;
  ManifestIndex index_;
  bool valid_ = false;
};

// The manifest the broker holds at its latest serial, fetched chunk by chunk
// and verified against the root it announced, recorded in `state`.
Status FetchBrokerManifest(const PublisherOptions& options, zmq::context_t& context,
                           uint32_t content_port, const BrokerRepoHead& latest,
                           ManifestState& state) {
  if (content_port == 0 || content_port > 65535) {
    return Status::Unavailable("broker " + options.broker.ToString() +
                               " announced no usable content port");
  }
  ContentClientOptions content_options;
  content_options.stall_timeout = options.timeout;
  content_options.transport = options.transport;
  ContentClient content(context, options.broker.WithPort(static_cast<uint16_t>(content_port)),
                        options.repo, content_options);
  Result<ManifestIndex> index = FetchManifestIndex(content, latest.root);
  if (!index.ok()) {
    return BrokerFailure(index.status(), options,
                         "the manifest index of serial " + std::to_string(latest.serial));
  }
  RemoteChunks chunks(content);
  // Every chunk is read (and checked against the index) before it is kept.
  MC_RETURN_IF_ERROR(
      ForEachEntry(*index, chunks, [](v1::FileEntry) {
        return Status::Ok();
      }).WithContext("the broker's manifest of serial " + std::to_string(latest.serial)));
  MC_RETURN_IF_ERROR(state.Save(latest.serial, *index, chunks)
                         .WithContext("keeping the broker's manifest in the state directory"));
  MC_LOG(info) << "fetched manifest repo=" << options.repo << " serial=" << latest.serial
               << " entries=" << index->entries() << " chunks=" << index->refs.size();
  return Status::Ok();
}

// Says why this publish starts from the broker's manifest rather than the
// one kept in the state directory. After a recall (`mirrorcast recall`) the
// broker's head is an earlier serial's content published again: this publish
// builds on that head, so the serials stay one line (never a fork from the
// state's older serial), and whatever the tree still holds of the recalled
// serials is published again — fix the tree first.
void LogNewBase(const PublisherOptions& options, const ManifestState& state,
                const BrokerRepoHead& latest) {
  const v1::RecallRecord& recall = latest.recall.head_recall();
  if (recall.serial() == latest.serial && recall.recall_of() != 0) {
    MC_LOG(warning) << "the broker's latest serial of " << options.repo << ", " << latest.serial
                    << ", is a recall of serial " << recall.recall_of() << " ("
                    << EscapeForLog(recall.reason(), 200) << ")"
                    << (state.valid()
                            ? "; the state directory is at serial " + std::to_string(state.serial())
                            : std::string())
                    << ". This publish starts from serial " << latest.serial
                    << "'s manifest (the recalled content): whatever in " << options.tree.string()
                    << " still differs from it is published again as serial " << latest.serial + 1;
    return;
  }
  MC_LOG(info) << "the state directory does not hold the broker's latest manifest (serial "
               << latest.serial
               << (state.valid() ? ", the state has serial " + std::to_string(state.serial())
                                 : std::string())
               << "); fetching it from the broker";
}

// Stores the manifest objects a publish without its change list refers to:
// the index and every chunk the broker's previous manifest does not have.
Status UploadManifest(const PublisherOptions& options, ControlClient& control,
                      const ManifestIndex& previous, const ManifestIndex& next,
                      ChunkSource& chunks) {
  std::set<std::string> known;
  for (const auto& r : previous.refs) known.insert(r.id);
  v1::ControlRequest request;
  size_t bytes = 0;
  uint64_t sent = 0;
  auto flush = [&]() -> Status {
    if (request.put_objects().objects_size() == 0) return Status::Ok();
    request.mutable_put_objects()->set_repo(options.repo);
    Result<v1::ControlReply> reply = control.Call(request, options.timeout);
    if (!reply.ok()) return BrokerFailure(reply.status(), options, "manifest upload");
    sent += static_cast<uint64_t>(request.put_objects().objects_size());
    request.Clear();
    bytes = 0;
    return Status::Ok();
  };
  auto add = [&](std::string object) -> Status {
    if (bytes + object.size() > options.max_upload_bytes) MC_RETURN_IF_ERROR(flush());
    bytes += object.size();
    request.mutable_put_objects()->add_objects(std::move(object));
    return Status::Ok();
  };
  for (const auto& r : next.refs) {
    if (known.count(r.id)) continue;
    MC_ASSIGN_OR_RETURN(std::string chunk, chunks.LoadChunk(r.id));
    MC_RETURN_IF_ERROR(add(std::move(chunk)));
  }
  std::string index = next.Encode();
  if (index.size() > kMaxPutObjectsBytes) {
    return Status::ResourceExhausted("the manifest index is " + std::to_string(index.size()) +
                                     " bytes, over the upload limit");
  }
  MC_RETURN_IF_ERROR(add(std::move(index)));
  MC_RETURN_IF_ERROR(flush());
  MC_LOG(info) << "uploaded manifest objects repo=" << options.repo << " objects=" << sent;
  return Status::Ok();
}

// The broker hard-links newly published files into its retained store,
// which moves their ctime (a link changes the inode), and the hash cache keys
// on ctime: without this the next scan would hash every one of them again.
// An entry moves only when it is exactly what the broker saw before its
// link, so a file changed meanwhile is still re-hashed. Links past what the
// reply carries (a first publish of millions of files) come in pages.
void FollowBrokerLinks(const PublisherOptions& options, ControlClient& control, uint64_t serial,
                       HashCache& hash_cache, const v1::PublishReply& reply) {
  if (reply.linked_size() == 0) return;
  if (!hash_cache.Begin().ok()) {
    MC_LOG(warning) << "cannot update the hash cache after the broker's links; the next scan "
                       "re-hashes the published files";
    return;
  }
  auto stat_of = [](const v1::LinkedFile& f, int64_t ctime_ns) {
    struct stat st {};
    st.st_ino = static_cast<ino_t>(f.inode());
    st.st_size = static_cast<off_t>(f.size());
    st.st_mtim.tv_sec = static_cast<time_t>(f.mtime_ns() / 1000000000);
    st.st_mtim.tv_nsec = static_cast<long>(f.mtime_ns() % 1000000000);
    st.st_ctim.tv_sec = static_cast<time_t>(ctime_ns / 1000000000);
    st.st_ctim.tv_nsec = static_cast<long>(ctime_ns % 1000000000);
    return st;
  };
  size_t moved = 0, seen = 0;
  std::string last_path;
  auto follow = [&](const google::protobuf::RepeatedPtrField<v1::LinkedFile>& linked) {
    for (const v1::LinkedFile& f : linked) {
      ++seen;
      std::optional<std::string> sha = hash_cache.Lookup(f.path(), stat_of(f, f.ctime_before_ns()));
      if (sha && hash_cache.Store(f.path(), stat_of(f, f.ctime_after_ns()), *sha).ok()) ++moved;
    }
    if (!linked.empty()) last_path = linked.rbegin()->path();
  };
  follow(reply.linked());
  // Each page starts after the last path received, so the loop ends: paths
  // only grow. The bound is for a broker that says "more" forever.
  bool more = reply.linked_more();
  for (int pages = 0; more && pages < 1000; ++pages) {
    v1::ControlRequest request;
    v1::LinkedRequest& page = *request.mutable_linked();
    page.set_repo(options.repo);
    page.set_serial(serial);
    page.set_after_path(last_path);
    Result<v1::ControlReply> got = control.Call(std::move(request), options.timeout);
    if (!got.ok() || !got->has_linked()) {
      MC_LOG(warning) << "cannot read the rest of the broker's links ("
                      << (got.ok() ? "no linked files in the reply" : got.status().ToString())
                      << "); the next full scan re-hashes the files not followed";
      break;
    }
    const std::string before = last_path;
    follow(got->linked().linked());
    more = got->linked().more() && last_path > before;
  }
  if (!hash_cache.Commit().ok()) {
    MC_LOG(warning) << "cannot update the hash cache after the broker's links";
    return;
  }
  MC_LOG(debug) << "hash cache follows " << moved << " of " << seen << " files the broker linked";
}

// Refuses a publish that would empty the repo or delete more than the
// allowed share of it (an erroneous push reaches every mirror in seconds).
Status CheckDeletions(const PublisherOptions& options, uint64_t entries_before,
                      const PublishOutcome& outcome) {
  if (options.force || entries_before == 0 || outcome.deleted == 0) return Status::Ok();
  const uint64_t entries_after = entries_before + outcome.added - outcome.deleted;
  const std::string hint = ". Is --tree " + options.tree.string() +
                           " the right directory, and mounted? Nothing was published; run again "
                           "with --force to publish it anyway";
  if (entries_after == 0) {
    return Status::Rejected("refused: this publish would leave repo " + options.repo +
                            " empty, deleting all " + std::to_string(entries_before) +
                            " entries of serial " + std::to_string(outcome.previous_serial) + hint);
  }
  const double share = static_cast<double>(outcome.deleted) / static_cast<double>(entries_before);
  if (share > options.max_delete_fraction) {
    std::ostringstream text;
    text.precision(3);
    text << "refused: this publish would delete " << outcome.deleted << " of the " << entries_before
         << " entries of repo " << options.repo << " (" << share * 100
         << "%), more than --max-delete-percent " << options.max_delete_fraction * 100 << hint
         << " (or with a higher --max-delete-percent)";
    return Status::Rejected(text.str());
  }
  return Status::Ok();
}

// User + system CPU of the whole process (every thread) so far.
double ProcessCpuSeconds() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const struct timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct ScanResult {
  uint64_t changes = 0;
  ScanStats stats;
  double seconds = 0;
};

// A progress report of a long scan: a bar redrawn in place on a terminal,
// a log line otherwise.
void ReportScanProgress(const ScanProgress& p, bool terminal) {
  const double rate = p.seconds > 0 ? static_cast<double>(p.bytes_hashed) / p.seconds : 0;
  const double entries_rate = p.seconds > 0 ? static_cast<double>(p.entries) / p.seconds : 0;
  char line[256];
  if (p.finished) {
    std::snprintf(line, sizeof line, "scanned %llu entries, %llu files hashed (%s, %s/s) in %.0f s",
                  static_cast<unsigned long long>(p.entries),
                  static_cast<unsigned long long>(p.files_hashed),
                  HumanBytes(static_cast<double>(p.bytes_hashed)).c_str(), HumanBytes(rate).c_str(),
                  p.seconds);
  } else if (p.entries_total > 0) {
    const uint64_t done = std::min(p.entries, p.entries_total);
    const double eta =
        entries_rate > 0 ? static_cast<double>(p.entries_total - done) / entries_rate : 0;
    std::snprintf(
        line, sizeof line,
        "scanning: %llu of %llu entries (%.0f%%), %llu files hashed (%s, %s/s), ETA %.0f s",
        static_cast<unsigned long long>(p.entries),
        static_cast<unsigned long long>(p.entries_total),
        100.0 * static_cast<double>(done) / static_cast<double>(p.entries_total),
        static_cast<unsigned long long>(p.files_hashed),
        HumanBytes(static_cast<double>(p.bytes_hashed)).c_str(), HumanBytes(rate).c_str(), eta);
  } else {
    std::snprintf(
        line, sizeof line, "scanning: %llu entries, %llu files hashed (%s, %s/s)",
        static_cast<unsigned long long>(p.entries), static_cast<unsigned long long>(p.files_hashed),
        HumanBytes(static_cast<double>(p.bytes_hashed)).c_str(), HumanBytes(rate).c_str());
  }
  if (!terminal) {
    MC_LOG(info) << line;
    return;
  }
  std::string bar;
  if (p.entries_total > 0) {
    const size_t filled =
        static_cast<size_t>(20.0 * static_cast<double>(std::min(p.entries, p.entries_total)) /
                            static_cast<double>(p.entries_total));
    bar = "[" + std::string(filled, '#') + std::string(20 - filled, ' ') + "] ";
  }
  std::fprintf(stderr, "\r%s%-110s%s", bar.c_str(), line, p.finished ? "\n" : "");
  std::fflush(stderr);
}

// The changes since `previous` (its chunks in `chunks`): a stat-only walk of
// the whole tree merged with the previous manifest and the hash cache, or a
// rescan of just the listed paths. Neither holds a whole manifest.
Result<ScanResult> ScanForChanges(const PublisherOptions& options, const ManifestIndex& previous,
                                  ChunkSource& chunks, HashCache& hash_cache,
                                  const std::optional<std::vector<std::string>>& paths,
                                  const ChangeSink& take) {
  ScanResult result;
  TreeDiffOptions diff;
  diff.scan = options.scan;
  diff.hash_threads = options.hash_threads;
  diff.clock = options.clock;
  if (!paths) {
    // A long scan reports its progress; a first publish counts its entries
    // first (directory listings only) so that the progress has a total.
    diff.entries_total = previous.entries();
    if (diff.entries_total == 0) {
      const auto counting = options.clock->Steady();
      Result<uint64_t> counted = CountTreeEntries(options.tree, options.scan);
      if (counted.ok()) {
        diff.entries_total = *counted;
        MC_LOG(info) << "first publish of repo=" << options.repo << ": " << *counted
                     << " entries to scan (counted in "
                     << std::chrono::duration<double>(options.clock->Steady() - counting).count()
                     << " s)";
      }
    }
    const bool terminal = ::isatty(STDERR_FILENO) == 1;
    diff.progress = [terminal](const ScanProgress& p) { ReportScanProgress(p, terminal); };
  }
  auto collect = [&](v1::Change c) {
    ++result.changes;
    return take(std::move(c));
  };
  const auto start = options.clock->Steady();
  const double cpu_start = ProcessCpuSeconds();
  if (paths) {
    MC_RETURN_IF_ERROR(
        DiffPaths(options.tree, *paths, previous, chunks, &hash_cache, &result.stats, diff, collect)
            .WithContext("rescanning listed paths of " + options.tree.string()));
  } else {
    MC_RETURN_IF_ERROR(
        DiffTree(options.tree, previous, chunks, &hash_cache, &result.stats, diff, collect)
            .WithContext("scanning " + options.tree.string()));
  }
  result.seconds = std::chrono::duration<double>(options.clock->Steady() - start).count();
  const double cpu = ProcessCpuSeconds() - cpu_start;
  MC_LOG(info) << "scanned repo=" << options.repo << " mode=" << (paths ? "paths" : "full")
               << " entries=" << result.stats.entries << " changes=" << result.changes
               << " files_hashed=" << result.stats.files_hashed
               << " bytes_hashed=" << result.stats.bytes_hashed
               << " cache_hits=" << result.stats.cache_hits << " skipped=" << result.stats.skipped
               << " seconds=" << result.seconds << " cpu_seconds=" << cpu;
  return result;
}

Result<PublishOutcome> PublishImpl(const PublisherOptions& options, zmq::context_t& context) {
  MC_RETURN_IF_ERROR(CheckOptions(options));

  // Everything local is checked before the broker is asked anything.
  Result<SigningKey> key = SigningKey::LoadFile(options.key_file);
  if (!key.ok()) {
    return Status::InvalidArgument("cannot load signing key " + options.key_file.string() + ": " +
                                   key.status().message());
  }
  std::vector<SigningKey> cosigners;
  for (const auto& file : options.cosign_key_files) {
    Result<SigningKey> cosigner = SigningKey::LoadFile(file);
    if (!cosigner.ok()) {
      return Status::InvalidArgument("cannot load signing key " + file.string() + ": " +
                                     cosigner.status().message());
    }
    cosigners.push_back(std::move(cosigner).value());
  }
  std::vector<const SigningKey*> signers = {&*key};
  for (const SigningKey& cosigner : cosigners) signers.push_back(&cosigner);
  std::optional<std::vector<std::string>> paths;
  if (options.paths_from) {
    MC_ASSIGN_OR_RETURN(paths, ReadPathsFile(*options.paths_from));
  }

  ControlClient control(context, options.broker, options.transport);
  Result<v1::HelloReply> hello = control.Hello(options.client_name, options.timeout);
  if (!hello.ok()) return BrokerFailure(hello.status(), options, "hello");
  MC_ASSIGN_OR_RETURN(const BrokerRepoHead latest, FindRepoHead(*hello, options.repo));
  MC_LOG(info) << "broker=" << options.broker.ToString() << " id=" << hello->broker_id()
               << " repo=" << options.repo << " latest_serial=" << latest.serial;

  PublishOutcome outcome;
  outcome.repo = options.repo;
  outcome.previous_serial = latest.serial;
  outcome.serial = latest.serial;

  Result<std::unique_ptr<ManifestState>> opened_state =
      ManifestState::Open(StateManifestPath(options));
  if (!opened_state.ok()) {
    return Status::InvalidArgument("cannot open " + StateManifestPath(options).string() + ": " +
                                   opened_state.status().message());
  }
  ManifestState& state = **opened_state;
  // One connection for the scan and for following the broker's links.
  Result<std::unique_ptr<HashCache>> hash_cache = HashCache::Open(HashCachePath(options));
  if (!hash_cache.ok()) {
    return Status::InvalidArgument("cannot open hash cache " + HashCachePath(options).string() +
                                   ": " + hash_cache.status().message());
  }
  ManifestIndex previous_index;
  if (latest.serial > 0) {
    if (state.Matches(latest.serial, latest.root)) {
      outcome.previous_from_state = true;
    } else {
      LogNewBase(options, state, latest);
      MC_RETURN_IF_ERROR(
          FetchBrokerManifest(options, context, hello->content_port(), latest, state));
    }
    previous_index = state.index();
  }

  // The changes, as the scan finds them. A first publish (nothing before)
  // is chunked as it streams by, and only as many changes are kept as could
  // travel in the event: a tree of millions of files is never held in
  // memory. Otherwise the change list is kept to derive the new chunks from
  // the old ones.
  MemoryChunks fresh(&state);
  auto keep_chunk = [&](const ChunkRef& ref, std::string bytes) {
    fresh.Put(ref.id, std::move(bytes));
    return Status::Ok();
  };
  std::optional<Chunker> direct;
  if (previous_index.refs.empty()) direct.emplace(keep_chunk);
  std::vector<v1::Change> changes;
  uint64_t change_count = 0;
  size_t change_bytes = 0;
  auto take = [&](v1::Change change) -> Status {
    switch (change.kind()) {
      case v1::CHANGE_ADDED:
        ++outcome.added;
        break;
      case v1::CHANGE_MODIFIED:
        ++outcome.modified;
        break;
      case v1::CHANGE_DELETED:
        ++outcome.deleted;
        break;
      default:
        return Status::Internal("the scan produced a change without a kind");
    }
    ++change_count;
    change_bytes += change.ByteSizeLong() + 4;
    if (direct) {
      MC_RETURN_IF_ERROR(direct->Add(change.entry()));
      if (change_bytes > options.max_inline_change_bytes) {
        if (!changes.empty()) std::vector<v1::Change>().swap(changes);
        return Status::Ok();
      }
    }
    changes.push_back(std::move(change));
    return Status::Ok();
  };
  MC_ASSIGN_OR_RETURN(ScanResult scan,
                      ScanForChanges(options, previous_index, state, **hash_cache, paths, take));
  outcome.scan = scan.stats;
  outcome.scan_seconds = scan.seconds;
  if (change_count == 0) {
    outcome.manifest_entries = previous_index.entries();
    MC_LOG(info) << "nothing changed repo=" << options.repo << " serial=" << latest.serial;
    return outcome;
  }

  MC_RETURN_IF_ERROR(CheckDeletions(options, previous_index.entries(), outcome));

  // The new root from the chunks the changes fall in.
  ManifestIndex next_index;
  if (direct) {
    MC_RETURN_IF_ERROR(direct->Finish());
    next_index.refs = direct->refs();
  } else {
    MC_ASSIGN_OR_RETURN(next_index,
                        ApplyChangesToIndex(previous_index, fresh, changes, keep_chunk));
  }
  outcome.manifest_entries = next_index.entries();
  outcome.scan.entries = next_index.entries();

  const int64_t now = options.clock->NowUnix();
  RepoChangedDraft draft;
  draft.repo = options.repo;
  draft.previous_serial = latest.serial;
  draft.root = next_index.Root();
  draft.entries = next_index.entries();
  draft.changes = std::move(changes);
  draft.change_count = change_count;
  draft.change_bytes = change_bytes;
  draft.max_inline_change_bytes = options.max_inline_change_bytes;
  draft.now_unix = now;
  draft.expires_unix = now + options.expiry_days * kSecondsPerDay;
  draft.keyset_version = hello->keyset_version();
  MC_ASSIGN_OR_RETURN(const SealedEvent sealed, SealRepoChanged(std::move(draft), signers));
  const bool omit = sealed.changes_omitted;
  if (omit) {
    MC_RETURN_IF_ERROR(UploadManifest(options, control, previous_index, next_index, fresh));
  }
  const uint64_t serial = sealed.serial;
  MC_LOG(info) << "publishing repo=" << options.repo << " serial=" << serial
               << " changes=" << outcome.changes() << (omit ? " (change list left out)" : "")
               << " entries=" << next_index.entries()
               << " manifest_chunks=" << next_index.refs.size();
  MC_ASSIGN_OR_RETURN(const v1::PublishReply reply,
                      SubmitPublish(control, sealed, change_count, options.timeout));
  outcome.published = true;
  outcome.serial = serial;
  MC_LOG(info) << "published repo=" << options.repo << " serial=" << serial;
  FollowBrokerLinks(options, control, serial, **hash_cache, reply);

  if (Status s = state.Save(serial, next_index, fresh); !s.ok()) {
    // The broker has it; the next run fetches it back from there.
    MC_LOG(warning) << "published, but cannot save the manifest in the state directory: "
                    << s.ToString();
  }
  return outcome;
}

}  // namespace

Result<PublishOutcome> Publish(const PublisherOptions& options, zmq::context_t& context) {
  try {
    return PublishImpl(options, context);
  } catch (const zmq::error_t& e) {
    // zmq reports a malformed endpoint or a dead context by throwing.
    return Status::Unavailable("broker " + options.broker.ToString() + ": " + e.what());
  }
}

Result<std::vector<std::string>> ParsePathList(std::string_view text) {
  std::vector<std::string> paths;
  size_t line_number = 0;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    ++line_number;

    // Only a '\r' is stripped: a path may end in a space, but a blank line
    // or a comment is recognised after any leading whitespace.
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const size_t first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos || line[first] == '#') continue;
    while (line.starts_with("./")) line.remove_prefix(2);
    while (line.size() > 1 && line.back() == '/') line.remove_suffix(1);

    if (Status s = ValidateRelativePath(line); !s.ok()) {
      return Status::InvalidArgument("path list line " + std::to_string(line_number) + ": '" +
                                     std::string(line) + "': " + s.message());
    }
    paths.emplace_back(line);
  }
  std::sort(paths.begin(), paths.end());
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
  return paths;
}

Result<std::vector<std::string>> ReadPathsFile(const std::filesystem::path& file) {
  std::string text;
  if (file == "-") {
    std::ostringstream all;
    all << std::cin.rdbuf();
    text = all.str();
  } else {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      return Status::InvalidArgument("cannot read --paths-from file " + file.string());
    }
    std::ostringstream all;
    all << in.rdbuf();
    if (in.bad()) {
      return Status::InvalidArgument("error reading --paths-from file " + file.string());
    }
    text = all.str();
  }
  Result<std::vector<std::string>> paths = ParsePathList(text);
  if (!paths.ok()) return paths.status().WithContext(file.string());
  return paths;
}

std::string DescribeOutcome(const PublishOutcome& outcome) {
  std::ostringstream out;
  if (!outcome.published) {
    out << "nothing changed: repo=" << outcome.repo << " stays at serial " << outcome.serial;
  } else {
    out << "published repo=" << outcome.repo << " serial=" << outcome.serial
        << " changes=" << outcome.changes() << " (added " << outcome.added << ", modified "
        << outcome.modified << ", deleted " << outcome.deleted << ")";
  }
  return out.str();
}

std::string DescribeScan(const ScanStats& stats) {
  std::ostringstream out;
  out << "scan: entries=" << stats.entries << " hashed_files=" << stats.files_hashed
      << " hashed_bytes=" << stats.bytes_hashed << " cache_hits=" << stats.cache_hits;
  return out.str();
}

}  // namespace mirrorcast
