// mirrorcast verify --tree DIR --state DIR [--repair --broker HOST:PORT]: the
// scrub. Re-reads every file of a mirror tree and checks it against the
// manifest the mirror recorded (STATE/subscriber.db), whose canonical digest
// was checked against signed events when it was applied. This is the
// guarantee of `rsync -c`, paid for once in a while at a bounded rate instead
// of on every sync.
//
// The check walks the recorded manifest in path order (parents before
// children), then walks the tree for entries the manifest does not name.
// Repair fetches whole files from a broker's content socket into a staging
// directory on the tree's filesystem, checks their SHA-256, sets mode and
// mtime, fsyncs and renames them into place, in the same order an apply uses:
// directories, content, metadata, index roots, then deletions, then directory
// modes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "core/base/clock.h"
#include "core/cli/options.h"
#include "core/cli/transport.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"
#include "core/manifest/manifest.h"
#include "core/manifest/metadata.h"
#include "core/mirror/applier.h"
#include "core/mirror/follower.h"
#include "core/mirror/mirror_state.h"
#include "core/mirror/trace_files.h"
#include "core/mirror/tree_binding.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/endpoint.h"
#include "tools/commands.h"

namespace po = boost::program_options;

namespace mirrorcast {
namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

constexpr std::string_view kStagingName = ".mirrorcast-staging";
constexpr size_t kReadChunk = 256 * 1024;

enum class Problem {
  kMissing,
  kType,
  kSize,
  kCorrupt,
  kUnreadable,
  kTarget,
  kMode,
  kMtime,
  kExtra
};

const char* ProblemName(Problem p) {
  switch (p) {
    case Problem::kMissing:
      return "MISSING";
    case Problem::kType:
      return "TYPE";
    case Problem::kSize:
      return "SIZE";
    case Problem::kCorrupt:
      return "CORRUPT";
    case Problem::kUnreadable:
      return "UNREADABLE";
    case Problem::kTarget:
      return "TARGET";
    case Problem::kMode:
      return "MODE";
    case Problem::kMtime:
      return "MTIME";
    case Problem::kExtra:
      return "EXTRA";
  }
  return "?";
}

// A file whose content must be fetched again (as opposed to metadata only).
bool NeedsContent(Problem p) {
  return p == Problem::kMissing || p == Problem::kType || p == Problem::kSize ||
         p == Problem::kCorrupt || p == Problem::kUnreadable;
}

struct Finding {
  Problem problem;
  std::string path;    // repo-relative
  std::string detail;  // "sha256 mismatch", "mode 0600, expected 0644", ...
  bool repaired = false;
  std::string repair_error;  // why a repair was not done
};

// Tree paths on one line: control bytes escaped, so a hostile name cannot
// forge output lines.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == '\\') {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", u);
      out += buffer;
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatUnix(int64_t unix_seconds) { return FormatUtc(unix_seconds); }

std::string Octal(uint32_t mode) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "%04o", mode & 07777);
  return buffer;
}

const char* KindOf(mode_t mode) {
  if (S_ISREG(mode)) return "file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISLNK(mode)) return "symlink";
  return "special file";
}

const char* KindOf(v1::EntryKind kind) {
  switch (kind) {
    case v1::ENTRY_FILE:
      return "file";
    case v1::ENTRY_DIRECTORY:
      return "directory";
    case v1::ENTRY_SYMLINK:
      return "symlink";
    default:
      return "entry";
  }
}

// Keeps the bytes hashed per second under a limit by sleeping. 0: unlimited.
class RateLimiter {
 public:
  explicit RateLimiter(double bytes_per_second)
      : rate_(bytes_per_second), start_(SteadyClock::now()) {}

  void Consumed(uint64_t bytes) {
    total_ += bytes;
    if (rate_ <= 0) return;
    const auto due =
        start_ + std::chrono::duration_cast<SteadyClock::duration>(
                     std::chrono::duration<double>(static_cast<double>(total_) / rate_));
    if (due > SteadyClock::now()) std::this_thread::sleep_until(due);
  }
  uint64_t total() const { return total_; }
  double seconds() const {
    return std::chrono::duration<double>(SteadyClock::now() - start_).count();
  }

 private:
  double rate_;
  SteadyClock::time_point start_;
  uint64_t total_ = 0;
};

// Checks a tree against a manifest; appends what differs to `findings`.
class TreeScrubber {
 public:
  TreeScrubber(fs::path tree, const Manifest& manifest, RateLimiter* limiter,
               std::function<void(const Finding&)> report,
               std::set<std::string> pending_deletion = {})
      : tree_(std::move(tree)),
        manifest_(manifest),
        limiter_(limiter),
        report_(std::move(report)),
        pending_deletion_(std::move(pending_deletion)) {}

  void CheckEntries() {
    for (const auto& [path, entry] : manifest_.entries()) {
      ++checked_;
      switch (entry.kind()) {
        case v1::ENTRY_FILE:
          CheckFile(entry);
          break;
        case v1::ENTRY_SYMLINK:
          CheckSymlink(entry);
          break;
        case v1::ENTRY_DIRECTORY:
          CheckDir(entry);
          break;
        default:
          break;
      }
    }
  }

  // Everything in the tree the manifest does not name. An extra directory is
  // reported once, not with its contents.
  void FindExtras() { Walk(""); }

  uint64_t checked() const { return checked_; }
  std::vector<Finding>& findings() { return findings_; }

 private:
  void Add(Problem problem, const std::string& path, std::string detail) {
    findings_.push_back(Finding{problem, path, std::move(detail), false, ""});
    report_(findings_.back());
  }

  // lstat of tree/path once no parent is a symlink or a non-directory.
  // nullopt (and a finding) when the entry is not there.
  std::optional<struct stat> Stat(const v1::FileEntry& entry) {
    if (Status s = CheckNoSymlinkParents(tree_, entry.path()); !s.ok()) {
      Add(Problem::kMissing, entry.path(), "a parent is not a directory");
      return std::nullopt;
    }
    struct stat st;
    const fs::path full = tree_ / entry.path();
    if (::lstat(full.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) {
        Add(Problem::kMissing, entry.path(), "");
      } else {
        Add(Problem::kUnreadable, entry.path(), Status::FromErrno("lstat", errno).message());
      }
      return std::nullopt;
    }
    return st;
  }

  bool CheckKind(const v1::FileEntry& entry, const struct stat& st, bool ok) {
    if (ok) return true;
    Add(Problem::kType, entry.path(),
        std::string(KindOf(st.st_mode)) + ", expected " + KindOf(entry.kind()));
    return false;
  }

  void CheckFile(const v1::FileEntry& entry) {
    std::optional<struct stat> st = Stat(entry);
    if (!st || !CheckKind(entry, *st, S_ISREG(st->st_mode))) return;
    if (static_cast<uint64_t>(st->st_size) != entry.size()) {
      Add(Problem::kSize, entry.path(),
          std::to_string(st->st_size) + " bytes, expected " + std::to_string(entry.size()));
      return;
    }
    Result<std::string> sha = HashFile(tree_ / entry.path());
    if (!sha.ok()) {
      Add(Problem::kUnreadable, entry.path(), sha.status().message());
      return;
    }
    if (*sha != entry.sha256()) {
      Add(Problem::kCorrupt, entry.path(), "sha256 mismatch");
      return;
    }
    if ((st->st_mode & 07777) != entry.mode()) {
      Add(Problem::kMode, entry.path(),
          "mode " + Octal(st->st_mode) + ", expected " + Octal(entry.mode()));
    }
    if (st->st_mtim.tv_sec != entry.mtime()) {
      Add(Problem::kMtime, entry.path(),
          "mtime " + std::to_string(st->st_mtim.tv_sec) + ", expected " +
              std::to_string(entry.mtime()));
    }
  }

  void CheckSymlink(const v1::FileEntry& entry) {
    std::optional<struct stat> st = Stat(entry);
    if (!st || !CheckKind(entry, *st, S_ISLNK(st->st_mode))) return;
    std::error_code ec;
    const fs::path target = fs::read_symlink(tree_ / entry.path(), ec);
    if (ec) {
      Add(Problem::kUnreadable, entry.path(), "readlink: " + ec.message());
    } else if (target.string() != entry.symlink_target()) {
      Add(Problem::kTarget, entry.path(),
          "points to " + Printable(target.string()) + ", expected " +
              Printable(entry.symlink_target()));
    }
  }

  void CheckDir(const v1::FileEntry& entry) {
    std::optional<struct stat> st = Stat(entry);
    if (!st || !CheckKind(entry, *st, S_ISDIR(st->st_mode))) return;
    if ((st->st_mode & 07777) != entry.mode()) {
      Add(Problem::kMode, entry.path(),
          "mode " + Octal(st->st_mode) + ", expected " + Octal(entry.mode()));
    }
  }

  // SHA-256 of a regular file, read at the limiter's pace. Tells the kernel
  // not to keep what was read: a scrub must not evict a web server's cache.
  Result<std::string> HashFile(const fs::path& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid()) return Status::FromErrno("open", errno);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("fstat", errno);
    if (!S_ISREG(st.st_mode)) return Status::FailedPrecondition("not a regular file");
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    Sha256 hasher;
    std::unique_ptr<char[]> buffer(new char[kReadChunk]);
    off_t done = 0;
    for (;;) {
      const ssize_t n = ::read(fd.get(), buffer.get(), kReadChunk);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("read", errno);
      }
      if (n == 0) break;
      hasher.Update(buffer.get(), static_cast<size_t>(n));
      ::posix_fadvise(fd.get(), done, n, POSIX_FADV_DONTNEED);
      done += n;
      limiter_->Consumed(static_cast<uint64_t>(n));
    }
    return hasher.Finish();
  }

  void Walk(const std::string& rel_dir) {
    const fs::path dir = rel_dir.empty() ? tree_ : tree_ / rel_dir;
    std::error_code ec;
    fs::directory_iterator it(dir, ec);
    if (ec) {
      Add(Problem::kUnreadable, rel_dir.empty() ? "." : rel_dir, "list: " + ec.message());
      return;
    }
    std::vector<std::pair<std::string, bool>> children;  // name, is a real directory
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      std::error_code type_ec;
      const bool is_dir = it->symlink_status(type_ec).type() == fs::file_type::directory;
      children.emplace_back(it->path().filename().string(), is_dir);
    }
    if (ec) {
      Add(Problem::kUnreadable, rel_dir.empty() ? "." : rel_dir, "list: " + ec.message());
    }
    std::sort(children.begin(), children.end());
    for (const auto& [name, is_dir] : children) {
      if (rel_dir.empty() && name == kStagingName) continue;
      const std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      const v1::FileEntry* entry = manifest_.Find(rel);
      if (entry == nullptr) {
        // Deleted by an update, kept for the subscriber's grace period.
        if (pending_deletion_.count(rel)) continue;
        // The subscriber's own trace files (and the directories it made for
        // them; what else they hold is checked).
        if (is_dir && IsTraceDirPath(rel)) {
          Walk(rel);
          continue;
        }
        if (!is_dir && IsTraceFilePath(rel)) continue;
        Add(Problem::kExtra, rel, is_dir ? "directory" : "");
      } else if (is_dir && entry->kind() == v1::ENTRY_DIRECTORY) {
        Walk(rel);
      }
    }
  }

  fs::path tree_;
  const Manifest& manifest_;
  RateLimiter* limiter_;
  std::function<void(const Finding&)> report_;
  std::set<std::string> pending_deletion_;
  std::vector<Finding> findings_;
  uint64_t checked_ = 0;
};

struct RepairOptions {
  fs::path tree;
  fs::path state;
  std::string repo;
  HostPort broker;
  ClientTransport transport;  // CURVE keys (the mirror's); nullopt: plain TCP
  std::chrono::milliseconds timeout{10000};
  bool delete_extra = false;
};

bool Unreachable(const Status& s) {
  return s.code() == Status::Code::kTimeout || s.code() == Status::Code::kUnavailable;
}

// Brings every finding's path back to the manifest with the mirror's own
// apply engine (core/mirror/applier.h): each damaged path becomes a change
// that takes it back to its recorded entry, staged (content fetched whole
// from the broker and checked against its SHA-256) and committed in the
// order an apply uses. Returns a non-ok status only when the broker cannot
// be reached (exit code 3); per-path failures are recorded in the findings.
class TreeRepairer : public BrokerLink {
 public:
  TreeRepairer(RepairOptions options, const Manifest& manifest)
      : options_(std::move(options)), manifest_(manifest) {}
  ~TreeRepairer() override {
    if (!staging_dir_.empty()) {
      std::error_code ec;
      fs::remove_all(staging_dir_, ec);
    }
  }

  Status Repair(std::vector<Finding>& findings) {
    // One change per path, in path order (parents before children).
    std::map<std::string, v1::Change> changes;
    std::set<std::string> refetch;  // content that cannot be trusted in place
    for (const Finding& f : findings) {
      if (f.problem == Problem::kExtra) {
        if (!options_.delete_extra) continue;
        struct stat st {};
        const fs::path full = options_.tree / f.path;
        if (::lstat(full.c_str(), &st) != 0) continue;
        v1::Change c;
        c.set_kind(v1::CHANGE_DELETED);
        c.mutable_entry()->set_path(f.path);
        c.mutable_entry()->set_kind(S_ISDIR(st.st_mode)   ? v1::ENTRY_DIRECTORY
                                    : S_ISLNK(st.st_mode) ? v1::ENTRY_SYMLINK
                                                          : v1::ENTRY_FILE);
        changes[f.path] = std::move(c);
        continue;
      }
      const v1::FileEntry* entry = manifest_.Find(f.path);
      if (entry == nullptr) continue;
      v1::Change c;
      c.set_kind(v1::CHANGE_MODIFIED);
      *c.mutable_entry() = *entry;
      changes[f.path] = std::move(c);
      if (entry->kind() == v1::ENTRY_FILE && NeedsContent(f.problem)) refetch.insert(f.path);
    }
    if (changes.empty()) return Status::Ok();
    std::vector<v1::Change> all;
    for (auto& [path, c] : changes) all.push_back(c);

    if (Status s = OpenApplier(); !s.ok()) {
      for (const auto& c : all) Record(c.entry().path(), s);
      return Status::Ok();
    }
    if (!refetch.empty()) MC_RETURN_IF_ERROR(Connect());
    // What the tree really holds: the manifest less the damaged files, so
    // nothing is reused from them.
    Manifest local = manifest_;
    for (const auto& path : refetch) local.Erase(path);

    Status s = StageAndCommit(local, all);
    if (Unreachable(s)) return s;
    if (s.ok() || all.size() == 1) {
      for (const auto& c : all) Record(c.entry().path(), s);
    } else {
      // One bad path must not stop the others: each file to fetch on its
      // own, then everything else together, each failure attributed.
      std::vector<v1::Change> rest;
      for (const auto& c : all) {
        if (!refetch.count(c.entry().path())) {
          rest.push_back(c);
          continue;
        }
        Status one = StageAndCommit(local, {c});
        if (Unreachable(one)) return one;
        Record(c.entry().path(), one);
      }
      if (!rest.empty()) {
        Status other = StageAndCommit(local, rest);
        for (const auto& c : rest) Record(c.entry().path(), other);
      }
    }

    for (Finding& f : findings) {
      auto it = outcome_.find(f.path);
      if (it == outcome_.end()) continue;
      if (f.problem == Problem::kExtra && !options_.delete_extra) continue;
      f.repaired = it->second.ok();
      if (!f.repaired) f.repair_error = it->second.message();
    }
    return Status::Ok();
  }

  // BrokerLink (only content() is used: a repair reads no events).
  Result<uint64_t> Head() override { return manifest_.serial(); }
  ControlClient& control() override { return *control_; }
  ContentClient& content() override { return *content_; }

 private:
  // A path's outcome is its first failure, else ok.
  void Record(const std::string& path, const Status& s) {
    auto [it, inserted] = outcome_.emplace(path, s);
    if (!inserted && it->second.ok()) it->second = s;
  }

  Status StageAndCommit(const Manifest& local, const std::vector<v1::Change>& changes) {
    ApplyStats stats;
    ManifestTree tree(local);
    // Without content to fetch no broker is needed (content_ stays null).
    MC_RETURN_IF_ERROR(applier_->Stage(tree, changes, content_.get(), &stats));
    Status s = applier_->Commit(changes);
    if (Status cleared = applier_->ClearStaging(); !cleared.ok() && s.ok()) s = cleared;
    return s;
  }

  // Stages like the subscriber (same filesystem as the tree), in a
  // directory of its own that is removed when done, so a repair never
  // touches what an interrupted apply left for reuse.
  Status OpenApplier() {
    MC_ASSIGN_OR_RETURN(fs::path base, ChooseStaging(options_.state, options_.tree, std::nullopt));
    staging_dir_ = base / ("verify-" + std::to_string(::getpid()));
    std::error_code ec;
    fs::remove_all(staging_dir_, ec);
    ApplierOptions apply;
    apply.tree = options_.tree;
    apply.staging = staging_dir_;
    apply.delta_min_bytes = UINT64_MAX;  // damaged files are no delta basis
    applier_ = std::make_unique<Applier>(std::move(apply));
    return applier_->ClearStaging();
  }

  // Hello on the control socket gives the content port.
  Status Connect() {
    if (content_) return Status::Ok();
    control_ = std::make_unique<ControlClient>(context_, options_.broker, options_.transport);
    Result<v1::HelloReply> hello = control_->Hello("mirrorcast verify", options_.timeout);
    if (!hello.ok()) return hello.status();
    if (hello->content_port() == 0 || hello->content_port() > 65535) {
      return Status::Rejected("broker announced no content port");
    }
    // The broker serves its latest tree: content that changed since this
    // mirror's serial fails its hash and stays unrepaired.
    for (const auto& r : hello->repos()) {
      if (r.repo() == options_.repo && r.serial() != manifest_.serial()) {
        std::cerr << "mirrorcast verify: warning: the broker is at serial " << r.serial()
                  << ", this mirror at " << manifest_.serial()
                  << "; files that changed in between cannot be repaired (start the "
                     "subscriber to catch up instead)\n";
      }
    }
    ContentClientOptions content;
    content.stall_timeout = options_.timeout;
    content.transport = options_.transport;
    content_ = std::make_unique<ContentClient>(
        context_, options_.broker.WithPort(static_cast<uint16_t>(hello->content_port())),
        options_.repo, content);
    return Status::Ok();
  }

  RepairOptions options_;
  const Manifest& manifest_;
  std::map<std::string, Status> outcome_;
  fs::path staging_dir_;
  std::unique_ptr<Applier> applier_;
  // Sockets are declared after the context so they close before it.
  zmq::context_t context_;
  std::unique_ptr<ControlClient> control_;
  std::unique_ptr<ContentClient> content_;
};

std::string FindingLine(const Finding& f) {
  std::string line = std::string(ProblemName(f.problem)) + " " + Printable(f.path);
  if (!f.detail.empty()) line += " (" + f.detail + ")";
  return line;
}

}  // namespace

int VerifyMain(int argc, char** argv) {
  const ProgramInfo info{
      "mirrorcast verify",
      "mirrorcast verify --tree DIR --state DIR [--repo R] [--rate MBPS] [--repair --broker "
      "HOST:PORT [--delete-extra]] [--json]",
      "Scrubs a mirror tree: re-reads every file and checks its size and SHA-256, and the "
      "mode, mtime, symlink target and kind of every entry, against the manifest the mirror "
      "recorded in STATE/subscriber.db (checked against the origin's signed events when it was "
      "applied); also lists entries the manifest does not name (EXTRA). Prints one line per "
      "problem (MISSING, TYPE, SIZE, CORRUPT, UNREADABLE, TARGET, MODE, MTIME, EXTRA) and a "
      "summary. Reading is throttled to --rate so a scrub does not starve the web server. "
      "With --repair, fetches every missing or damaged file whole from the broker (its SHA-256 "
      "checked before it is renamed into place), restores modes, mtimes, symlinks and "
      "directories, and deletes EXTRA entries only with --delete-extra (kept extras do not "
      "change the exit code of a repair). Run it while the subscriber is stopped: a "
      "concurrent apply may be reported as problems, and a repair may race with it. Exit "
      "codes: 0 no problems (or all repaired); 1 problems remain; 2 usage error; 3 broker "
      "unreachable."};
  po::options_description options("Verify options");
  options.add_options()("tree", po::value<std::string>()->required(), "the mirror's tree")(
      "state", po::value<std::string>()->required(), "the subscriber's state directory")(
      "repo", po::value<std::string>(), "repo to verify (default: the only one in the state)")(
      "rate", po::value<double>()->default_value(50),
      "read at most this many MB (10^6 bytes) per second; 0 = unlimited")(
      "repair", po::bool_switch(), "fetch and fix whatever differs (needs --broker)")(
      "delete-extra", po::bool_switch(), "with --repair: also delete EXTRA entries")(
      "broker", po::value<std::string>(), "broker control endpoint for --repair, HOST:PORT")(
      "timeout", po::value<double>()->default_value(10),
      "with --repair: seconds to wait for the broker")("json", po::bool_switch(),
                                                       "print one JSON object instead of lines");
  options.add(ClientTransportOptions());
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;

  const fs::path tree = (*vm)["tree"].as<std::string>();
  const fs::path state = (*vm)["state"].as<std::string>();
  const double rate = (*vm)["rate"].as<double>();
  const bool repair = (*vm)["repair"].as<bool>();
  const bool delete_extra = (*vm)["delete-extra"].as<bool>();
  const bool json = (*vm)["json"].as<bool>();
  const std::chrono::milliseconds timeout = TimeoutOption(*vm);
  if (!std::isfinite(rate) || rate < 0) throw std::runtime_error("bad --rate: must be >= 0");
  if (delete_extra && !repair) throw std::runtime_error("--delete-extra needs --repair");
  std::optional<HostPort> broker;
  if (vm->count("broker")) {
    Result<HostPort> parsed = ParseHostPort((*vm)["broker"].as<std::string>());
    if (!parsed.ok()) throw std::runtime_error("bad --broker: " + parsed.status().message());
    if (parsed->port == 0) throw std::runtime_error("bad --broker: the port must not be 0");
    broker = *parsed;
  }
  if (repair && !broker) throw std::runtime_error("--repair needs --broker HOST:PORT");
  // Only a repair talks to the broker (with the mirror's key: role mirror).
  ClientTransport transport;
  if (repair) transport = ClientTransportFromOptions(*vm, info.name);
  std::error_code ec;
  if (!fs::is_directory(tree, ec)) {
    throw std::runtime_error("--tree " + tree.string() + " is not a directory");
  }
  if (!fs::exists(state / "subscriber.db", ec)) {
    throw std::runtime_error("--state " + state.string() + " holds no subscriber.db");
  }

  // A state describes one tree: checking (or repairing) another against it
  // would turn that tree into this state's repo.
  if (Status bound = CheckStateTree(state, tree); !bound.ok()) {
    throw std::runtime_error(bound.message());
  }

  Result<std::vector<std::string>> repos = MirrorState::RecordedRepos(state);
  if (!repos.ok()) {
    std::cerr << info.name << ": error: " << repos.status().ToString() << "\n";
    return 1;
  }
  std::string repo;
  if (vm->count("repo")) {
    repo = (*vm)["repo"].as<std::string>();
    if (std::find(repos->begin(), repos->end(), repo) == repos->end()) {
      throw std::runtime_error("the state records no repo '" + repo + "'");
    }
  } else if (repos->size() == 1) {
    repo = repos->front();
  } else {
    std::string names;
    for (const auto& r : *repos) names += " " + r;
    throw std::runtime_error(repos->empty() ? "the state records no repo yet"
                                            : "the state records several repos, pick one with "
                                              "--repo:" +
                                                  names);
  }

  Result<std::unique_ptr<MirrorState>> local = MirrorState::Open(state, repo);
  if (!local.ok()) {
    std::cerr << info.name << ": error: " << local.status().ToString() << "\n";
    return 1;
  }
  Result<Manifest> loaded = (*local)->LoadManifest();
  if (!loaded.ok()) {
    std::cerr << info.name << ": error: " << loaded.status().ToString() << "\n";
    return 1;
  }
  const Manifest& manifest = *loaded;
  if (auto journal = (*local)->ReadJournal(); journal.ok() && journal->has_value()) {
    std::cerr << info.name << ": warning: an apply of serial " << (*journal)->serial
              << " was interrupted and is not finished (the subscriber finishes it when it "
                 "starts); checking against serial "
              << manifest.serial() << "\n";
  }

  // What the follower refused (rollback, conflict, expired or badly signed
  // offers): shown here because the broker that caused it may hide it.
  std::vector<MirrorState::Refusal> refusals;
  if (auto recorded = (*local)->Refusals(); recorded.ok()) refusals = std::move(*recorded);
  if (!json) {
    std::cout << "verifying repo " << repo << " at serial " << manifest.serial() << " ("
              << manifest.size() << " entries) in " << tree.string() << std::endl;
    for (const auto& r : refusals) {
      std::cout << "REFUSED serial " << r.serial << ": " << Printable(r.reason) << " (first "
                << FormatUnix(r.first_unix) << ", last " << FormatUnix(r.last_unix) << ", "
                << r.count << " time(s)); this mirror refused it from its broker" << std::endl;
    }
  }
  std::set<std::string> pending_deletion;
  if (auto deferred = (*local)->DueDeletions(INT64_MAX); deferred.ok()) {
    for (const auto& d : *deferred) pending_deletion.insert(d.path);
  }
  RateLimiter limiter(rate * 1e6);
  TreeScrubber scrubber(
      tree, manifest, &limiter,
      [&](const Finding& f) {
        if (!json) std::cout << FindingLine(f) << std::endl;
      },
      std::move(pending_deletion));
  scrubber.CheckEntries();
  scrubber.FindExtras();
  const double seconds = limiter.seconds();
  std::vector<Finding>& findings = scrubber.findings();

  int exit_code = 0;
  if (repair && !findings.empty()) {
    RepairOptions ro;
    ro.tree = tree;
    ro.state = state;
    ro.repo = repo;
    ro.broker = *broker;
    ro.transport = transport;
    ro.timeout = timeout;
    ro.delete_extra = delete_extra;
    TreeRepairer repairer(ro, manifest);
    Status s = repairer.Repair(findings);
    if (!s.ok()) {
      std::cerr << info.name << ": error: broker " << broker->ToString() << ": " << s.ToString()
                << "\n";
      const bool unreachable =
          s.code() == Status::Code::kTimeout || s.code() == Status::Code::kUnavailable;
      exit_code = unreachable ? 3 : 1;
    }
  }

  size_t repaired = 0, kept_extra = 0, remaining = 0;
  for (const Finding& f : findings) {
    if (f.repaired) {
      ++repaired;
    } else if (repair && !delete_extra && f.problem == Problem::kExtra) {
      ++kept_extra;
    } else {
      ++remaining;
    }
  }
  const double mbps = seconds > 0 ? static_cast<double>(limiter.total()) / 1e6 / seconds : 0.0;
  if (json) {
    nlohmann::json problems = nlohmann::json::array();
    for (const Finding& f : findings) {
      nlohmann::json p = {{"problem", ProblemName(f.problem)},
                          {"path", f.path},
                          {"detail", f.detail},
                          {"repaired", f.repaired}};
      if (!f.repair_error.empty()) p["repair_error"] = f.repair_error;
      problems.push_back(std::move(p));
    }
    nlohmann::json doc = {{"repo", repo},
                          {"serial", manifest.serial()},
                          {"entries", scrubber.checked()},
                          {"bytes_hashed", limiter.total()},
                          {"seconds", seconds},
                          {"problems", std::move(problems)},
                          {"repaired", repaired},
                          {"extra_kept", kept_extra},
                          {"remaining", remaining}};
    nlohmann::json refused = nlohmann::json::array();
    for (const auto& r : refusals) {
      refused.push_back({{"serial", r.serial},
                         {"reason", r.reason},
                         {"first_unix", r.first_unix},
                         {"last_unix", r.last_unix},
                         {"count", r.count}});
    }
    doc["refused"] = std::move(refused);
    std::cout << doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    if (repair) {
      for (const Finding& f : findings) {
        if (f.repaired || f.repair_error.empty()) continue;
        std::cout << "NOT REPAIRED " << Printable(f.path) << ": " << Printable(f.repair_error)
                  << "\n";
      }
    }
    char summary[256];
    std::snprintf(summary, sizeof summary,
                  "verified %llu entries, %llu bytes hashed in %.2f s (%.1f MB/s): %zu problems",
                  static_cast<unsigned long long>(scrubber.checked()),
                  static_cast<unsigned long long>(limiter.total()), seconds, mbps, findings.size());
    std::cout << summary;
    if (repair) std::cout << ", " << repaired << " repaired";
    if (kept_extra > 0) std::cout << " (" << kept_extra << " extra kept; --delete-extra removes)";
    std::cout << std::endl;
  }
  if (exit_code != 0) return exit_code;
  return remaining == 0 ? 0 : 1;
}

}  // namespace mirrorcast
