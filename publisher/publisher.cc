#include "publisher/publisher.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <system_error>

#include "core/base/log.h"
#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"
#include "core/manifest/hash_cache.h"
#include "core/manifest/manifest.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/wire/envelope.h"

namespace mirrorcast {
namespace {

constexpr int64_t kSecondsPerDay = 24 * 60 * 60;
constexpr int kMaxExpiryDays = 3650;

std::string Seconds(std::chrono::milliseconds d) {
  std::ostringstream out;
  out << static_cast<double>(d.count()) / 1000.0 << " s";
  return out.str();
}

std::filesystem::path StateManifestPath(const PublisherOptions& options) {
  return options.state_dir / (options.repo + ".manifest");
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
  const std::string where = "broker " + options.broker.ToString();
  switch (s.code()) {
    case Status::Code::kTimeout:
      return Status::Timeout(where + " did not answer " + std::string(what) + " within " +
                             Seconds(options.timeout));
    case Status::Code::kUnavailable:
      return Status::Unavailable(s.message() + " (" + std::string(what) + ", waited " +
                                 Seconds(options.timeout) + ")");
    case Status::Code::kRejected:
      return Status::Rejected(where + " refused " + std::string(what) + ": " + s.message());
    default:
      return s.WithContext(std::string(what) + " via " + where);
  }
}

struct BrokerRepoState {
  uint64_t serial = 0;
  std::string digest;  // empty when the broker does not know the repo
};

Result<BrokerRepoState> FindRepo(const v1::HelloReply& hello, const std::string& repo) {
  BrokerRepoState state;
  for (const v1::RepoSerial& r : hello.repos()) {
    if (r.repo() != repo) continue;
    state.serial = r.serial();
    state.digest = r.manifest_sha256();
    if (state.serial > 0 && state.digest.size() != kSha256Size) {
      return Status::Corruption("broker announced a malformed manifest digest for repo " + repo);
    }
    break;
  }
  return state;
}

// The state directory's copy, when it is exactly the broker's latest manifest.
std::optional<Manifest> LoadStateManifest(const PublisherOptions& options,
                                          const BrokerRepoState& latest) {
  const std::filesystem::path path = StateManifestPath(options);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  Result<std::string> bytes = ReadFileToString(path, kMaxControlMessageBytes);
  if (!bytes.ok()) {
    MC_LOG(warning) << "cannot read " << path.string() << ": " << bytes.status().ToString();
    return std::nullopt;
  }
  Result<Manifest> manifest = Manifest::Parse(*bytes);
  if (!manifest.ok()) {
    MC_LOG(warning) << "ignoring unparsable " << path.string() << ": "
                    << manifest.status().ToString();
    return std::nullopt;
  }
  if (manifest->repo() != options.repo || manifest->serial() != latest.serial) {
    MC_LOG(info) << "state manifest repo=" << manifest->repo() << " serial=" << manifest->serial()
                 << " is not the broker's latest (serial=" << latest.serial
                 << "); fetching it from the broker";
    return std::nullopt;
  }
  if (manifest->Digest() != latest.digest) {
    MC_LOG(warning) << "state manifest repo=" << options.repo << " serial=" << latest.serial
                    << " differs from the broker's (digest " << ToHex(manifest->Digest()) << " vs "
                    << ToHex(latest.digest) << "); fetching it from the broker";
    return std::nullopt;
  }
  return std::move(manifest).value();
}

Status SaveStateManifest(const PublisherOptions& options, const Manifest& manifest) {
  return WriteFileAtomic(StateManifestPath(options), manifest.Serialize(), 0644);
}

// The manifest the broker holds at its latest serial, verified against the
// digest it announced.
Result<Manifest> FetchBrokerManifest(const PublisherOptions& options, zmq::context_t& context,
                                     uint32_t content_port, const BrokerRepoState& latest) {
  if (content_port == 0 || content_port > 65535) {
    return Status::Unavailable("broker " + options.broker.ToString() +
                               " announced no usable content port");
  }
  ContentClientOptions content_options;
  content_options.stall_timeout = options.timeout;
  ContentClient content(context, options.broker.WithPort(static_cast<uint16_t>(content_port)),
                        options.repo, content_options);
  FetchStats stats;
  Result<std::string> bytes = content.FetchManifest(latest.serial, kMaxControlMessageBytes, &stats);
  if (!bytes.ok()) {
    return BrokerFailure(bytes.status(), options,
                         "the manifest of serial " + std::to_string(latest.serial));
  }
  MC_ASSIGN_OR_RETURN(Manifest manifest, Manifest::Parse(*bytes));
  if (manifest.repo() != options.repo || manifest.serial() != latest.serial) {
    return Status::Corruption("broker sent the manifest of repo=" + manifest.repo() + " serial=" +
                              std::to_string(manifest.serial()) + " for repo=" + options.repo +
                              " serial=" + std::to_string(latest.serial));
  }
  if (manifest.Digest() != latest.digest) {
    return Status::Corruption("the manifest fetched for repo=" + options.repo +
                              " serial=" + std::to_string(latest.serial) +
                              " does not match the digest the broker announced");
  }
  MC_LOG(info) << "fetched manifest repo=" << options.repo << " serial=" << latest.serial
               << " entries=" << manifest.size() << " bytes=" << bytes->size();
  return manifest;
}

// The broker hard-links newly published files into its retained store,
// which moves their ctime (a link changes the inode), and the hash cache keys
// on ctime: without this the next scan would hash every one of them again.
// An entry moves only when it is exactly what the broker saw before its
// link, so a file changed meanwhile is still re-hashed.
void FollowBrokerLinks(const PublisherOptions& options, const v1::PublishReply& reply) {
  if (reply.linked_size() == 0) return;
  Result<std::unique_ptr<HashCache>> cache = HashCache::Open(HashCachePath(options));
  if (!cache.ok() || !(*cache)->Begin().ok()) {
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
  size_t moved = 0;
  for (const v1::LinkedFile& f : reply.linked()) {
    std::optional<std::string> sha = (*cache)->Lookup(f.path(), stat_of(f, f.ctime_before_ns()));
    if (!sha) continue;
    if ((*cache)->Store(f.path(), stat_of(f, f.ctime_after_ns()), *sha).ok()) ++moved;
  }
  if (!(*cache)->Commit().ok()) {
    MC_LOG(warning) << "cannot update the hash cache after the broker's links";
    return;
  }
  MC_LOG(debug) << "hash cache follows " << moved << " of " << reply.linked_size()
                << " files the broker linked";
}

struct ScanResult {
  Manifest manifest;
  ScanStats stats;
  double seconds = 0;
};

Result<ScanResult> ScanForChanges(const PublisherOptions& options, const Manifest& previous,
                                  const std::optional<std::vector<std::string>>& paths) {
  Result<std::unique_ptr<HashCache>> cache = HashCache::Open(HashCachePath(options));
  if (!cache.ok()) {
    return Status::InvalidArgument("cannot open hash cache " + HashCachePath(options).string() +
                                   ": " + cache.status().message());
  }
  ScanResult result;
  const auto start = options.clock->Steady();
  if (paths) {
    result.manifest = previous;
    MC_RETURN_IF_ERROR(RescanPaths(options.tree, *paths, cache->get(), &result.manifest,
                                   &result.stats, options.scan)
                           .WithContext("rescanning listed paths of " + options.tree.string()));
  } else {
    Result<Manifest> scanned = ScanTree(options.tree, cache->get(), &result.stats, options.scan);
    if (!scanned.ok()) return scanned.status().WithContext("scanning " + options.tree.string());
    result.manifest = std::move(scanned).value();
  }
  result.seconds = std::chrono::duration<double>(options.clock->Steady() - start).count();
  result.stats.entries = result.manifest.size();
  result.manifest.set_repo(options.repo);
  MC_LOG(info) << "scanned repo=" << options.repo << " mode=" << (paths ? "paths" : "full")
               << " entries=" << result.stats.entries
               << " files_hashed=" << result.stats.files_hashed
               << " bytes_hashed=" << result.stats.bytes_hashed
               << " cache_hits=" << result.stats.cache_hits << " skipped=" << result.stats.skipped
               << " seconds=" << result.seconds;
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
  std::optional<std::vector<std::string>> paths;
  if (options.paths_from) {
    MC_ASSIGN_OR_RETURN(paths, ReadPathsFile(*options.paths_from));
  }

  ControlClient control(context, options.broker);
  Result<v1::HelloReply> hello = control.Hello(options.client_name, options.timeout);
  if (!hello.ok()) return BrokerFailure(hello.status(), options, "hello");
  MC_ASSIGN_OR_RETURN(const BrokerRepoState latest, FindRepo(*hello, options.repo));
  MC_LOG(info) << "broker=" << options.broker.ToString() << " id=" << hello->broker_id()
               << " repo=" << options.repo << " latest_serial=" << latest.serial;

  PublishOutcome outcome;
  outcome.repo = options.repo;
  outcome.previous_serial = latest.serial;
  outcome.serial = latest.serial;

  Manifest previous(options.repo, latest.serial);
  if (latest.serial > 0) {
    if (std::optional<Manifest> kept = LoadStateManifest(options, latest)) {
      previous = std::move(*kept);
      outcome.previous_from_state = true;
    } else {
      MC_ASSIGN_OR_RETURN(previous,
                          FetchBrokerManifest(options, context, hello->content_port(), latest));
      // A verified copy of the broker's manifest spares the next run the fetch.
      if (Status s = SaveStateManifest(options, previous); !s.ok()) {
        MC_LOG(warning) << "cannot keep the broker's manifest in the state directory: "
                        << s.ToString();
      }
    }
  }

  MC_ASSIGN_OR_RETURN(ScanResult scan, ScanForChanges(options, previous, paths));
  outcome.scan = scan.stats;
  outcome.scan_seconds = scan.seconds;
  Manifest& next = scan.manifest;
  next.set_serial(latest.serial + 1);
  outcome.manifest_entries = next.size();

  std::vector<v1::Change> changes = DiffManifests(previous, next);
  if (changes.empty()) {
    MC_LOG(info) << "nothing changed repo=" << options.repo << " serial=" << latest.serial;
    return outcome;
  }

  const int64_t now = options.clock->NowUnix();
  v1::SignedPayload payload;
  v1::RepoChanged& event = *payload.mutable_repo_changed();
  event.set_repo(options.repo);
  event.set_serial(latest.serial + 1);
  event.set_previous_serial(latest.serial);
  event.set_published_unix(now);
  event.set_expires_unix(now + options.expiry_days * kSecondsPerDay);
  event.set_manifest_sha256(next.Digest());
  event.set_manifest_entries(next.size());
  for (v1::Change& change : changes) {
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
        return Status::Internal("DiffManifests produced a change without a kind");
    }
    *event.add_changes() = std::move(change);
  }
  // What every mirror will check; failing here beats a broker refusal.
  MC_RETURN_IF_ERROR(
      CheckRepoChanged(event, now).WithContext("the event built for repo " + options.repo));

  std::string envelope = SealEnvelope(std::move(payload), *key);
  if (envelope.size() > kMaxEnvelopeBytes) {
    return Status::ResourceExhausted("the signed event for " + std::to_string(outcome.changes()) +
                                     " changes is " + std::to_string(envelope.size()) +
                                     " bytes, over the " + std::to_string(kMaxEnvelopeBytes) +
                                     "-byte envelope limit; publish in smaller steps");
  }
  v1::ControlRequest request;
  v1::PublishRequest& publish = *request.mutable_publish();
  publish.set_envelope(std::move(envelope));
  publish.set_manifest(next.Serialize());
  if (publish.manifest().size() + publish.envelope().size() > kMaxControlMessageBytes) {
    return Status::ResourceExhausted("the manifest of repo " + options.repo +
                                     " is over the control message limit");
  }

  const uint64_t serial = latest.serial + 1;
  MC_LOG(info) << "publishing repo=" << options.repo << " serial=" << serial
               << " changes=" << outcome.changes() << " entries=" << next.size();
  Result<v1::ControlReply> reply = control.Call(std::move(request), options.timeout);
  if (!reply.ok()) {
    Status failure =
        BrokerFailure(reply.status(), options, "publish of serial " + std::to_string(serial));
    if (failure.code() == Status::Code::kTimeout) {
      failure = Status::Timeout(failure.message() +
                                "; it may still accept it (the next run will see its serial)");
    }
    return failure;
  }
  if (reply->has_publish() && reply->publish().serial() != serial) {
    MC_LOG(warning) << "broker confirmed serial " << reply->publish().serial() << ", expected "
                    << serial;
  }
  outcome.published = true;
  outcome.serial = serial;
  MC_LOG(info) << "published repo=" << options.repo << " serial=" << serial;
  FollowBrokerLinks(options, reply->publish());

  if (Status s = SaveStateManifest(options, next); !s.ok()) {
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

int PublishExitCode(const Status& status) {
  switch (status.code()) {
    case Status::Code::kOk:
      return 0;
    case Status::Code::kInvalidArgument:
      return 2;
    case Status::Code::kUnavailable:
    case Status::Code::kTimeout:
      return 3;
    default:
      return 1;
  }
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
