#include "broker/content_server.h"

#include "broker/manifest_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <system_error>

#include "core/base/log.h"
#include "core/base/thread_guard.h"
#include "core/crypto/sha256.h"
#include "core/delta/delta.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"
#include "core/net/content_client.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

namespace fs = std::filesystem;
using Millis = std::chrono::milliseconds;

namespace {

constexpr size_t kMaxQueuedJobs = 100000;

v1::ContentReply Error(const std::string& message) {
  v1::ContentReply reply;
  reply.set_ok(false);
  reply.set_error(message);
  return reply;
}

// Answers a byte range of an open file. With `expect`, the file must still
// have that identity after the read, or the bytes are not sent.
v1::ContentReply ReadRange(int fd, uint64_t offset, uint32_t length, const std::string& what,
                           const FileIdentity* expect = nullptr) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Error("stat " + what + " failed");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (length > kMaxChunk) return Error("chunk larger than " + std::to_string(kMaxChunk));
  if (offset > size) return Error("offset beyond the end of " + what);
  const uint64_t want = std::min<uint64_t>(length, size - offset);
  v1::ContentReply reply;
  std::string* data = reply.mutable_data();
  data->resize(want);
  size_t done = 0;
  while (done < want) {
    ssize_t n = ::pread(fd, data->data() + done, want - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error("read " + what + " failed");
    done += static_cast<size_t>(n);
  }
  if (expect != nullptr) {
    struct stat after {};
    if (::fstat(fd, &after) != 0 || !SameContent(*expect, IdentityOf(after))) {
      return Error(what + " changed since it was published; refusing to serve it");
    }
  }
  reply.set_ok(true);
  reply.set_total_size(size);
  reply.set_offset(offset);
  return reply;
}

// "path (sha256 0123456789ab...)" for replies and logs.
std::string Describe(const std::string& path, const std::string& sha256) {
  return EscapeForLog(path) + " (sha256 " + ToHex(sha256).substr(0, 16) + "...)";
}

std::string ReplyEndpoint(const void* self) {
  return "inproc://mirrorcast-content-replies-" + std::to_string(reinterpret_cast<uintptr_t>(self));
}

}  // namespace

ContentServer::ContentServer(zmq::context_t& context, ContentServerOptions options)
    : context_(context), options_(std::move(options)), router_(context, zmq::socket_type::router) {}

ContentServer::~ContentServer() { Stop(); }

Status ContentServer::Start() {
  std::error_code ec;
  fs::create_directories(options_.scratch_dir, ec);
  if (ec) return Status::IoError("create " + options_.scratch_dir.string() + ": " + ec.message());
  // Deltas left by an earlier run are useless now.
  for (const auto& entry : fs::directory_iterator(options_.scratch_dir, ec)) {
    std::error_code rm;
    fs::remove(entry.path(), rm);
  }
  ConfigureSocket(router_, options_.bind, static_cast<int64_t>(kMaxContentRequestBytes));
  router_.set(zmq::sockopt::sndhwm, 10000);
  router_.set(zmq::sockopt::rcvhwm, 10000);
  try {
    router_.bind(options_.bind.Endpoint());
  } catch (const zmq::error_t& e) {
    return Status::Unavailable("bind content socket " + options_.bind.ToString() + ": " + e.what());
  }
  MC_ASSIGN_OR_RETURN(port_, BoundPort(router_));
  if (options_.objects == nullptr)
    return Status::Internal("content server without an object store");
  readers_.clear();
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    auto reader = ServableVersionReader::Open(options_.state_dir);
    if (!reader.ok()) return reader.status().WithContext("content worker's view of broker.db");
    readers_.push_back(std::move(*reader));
  }
  stop_ = false;
  failed_ = false;
  io_thread_ = std::thread([this] { Guarded("content io", [this] { IoLoop(); }); });
  for (auto& reader : readers_) {
    workers_.emplace_back(
        [this, r = reader.get()] { Guarded("content worker", [this, r] { WorkerLoop(r); }); });
  }
  return Status::Ok();
}

void ContentServer::Stop() {
  if (!io_thread_.joinable()) return;
  {
    // Under the lock: a worker between its check and its wait would
    // otherwise miss the wake-up and sleep forever.
    std::lock_guard lock(jobs_mu_);
    stop_ = true;
  }
  jobs_cv_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
  readers_.clear();
  io_thread_.join();
  router_.close();
  std::lock_guard lock(deltas_mu_);
  transfers_.clear();
  delta_cache_.clear();
}

void ContentServer::Guarded(std::string_view name, const std::function<void()>& loop) {
  Status s = RunGuarded(name, [&] {
    loop();
    return Status::Ok();
  });
  // A loop ends only when asked to; ending otherwise (an error it logged, an
  // exception) leaves nobody serving, so the broker stops with a failure.
  if (s.ok() && !stop_) s = Status::Internal(std::string(name) + " loop ended");
  if (!s.ok()) {
    MC_LOG(fatal) << s.ToString();
    failed_ = true;
  }
}

void ContentServer::IoLoop() {
  zmq::socket_t replies(context_, zmq::socket_type::pull);
  replies.set(zmq::sockopt::linger, 0);
  replies.bind(ReplyEndpoint(this));
  while (!stop_) {
    zmq::pollitem_t items[] = {{static_cast<void*>(router_), 0, ZMQ_POLLIN, 0},
                               {static_cast<void*>(replies), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, Millis(200));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      MC_LOG(error) << "content poll failed: " << e.what();
      break;
    }
    if (items[1].revents & ZMQ_POLLIN) {
      for (int i = 0; i < 1000; ++i) {
        auto frames = ReceiveMultipart(replies);
        if (frames.empty()) break;
        // A peer over its high-water mark loses this reply; its stall timeout
        // and resume take care of it, and nobody else waits.
        SendMultipartNoWait(router_, frames);
      }
    }
    if (items[0].revents & ZMQ_POLLIN) {
      for (int i = 0; i < 1000; ++i) {
        auto frames = ReceiveMultipart(router_);
        if (frames.empty()) break;
        if (frames.size() != 2) continue;  // not our protocol
        Job job;
        job.identity = frames[0].to_string();
        Status parsed = ParseFrame(frames[1], kMaxContentRequestBytes, &job.request);
        if (!parsed.ok() || job.request.protocol_version() != kProtocolVersion) {
          v1::ContentReply reply =
              Error(parsed.ok() ? "unsupported protocol version" : parsed.message());
          reply.set_request_id(job.request.request_id());
          reply.set_protocol_version(kProtocolVersion);
          std::vector<zmq::message_t> out;
          out.emplace_back(job.identity.data(), job.identity.size());
          out.push_back(ToFrame(reply));
          SendMultipartNoWait(router_, out);
          continue;
        }
        std::lock_guard lock(jobs_mu_);
        if (jobs_.size() >= kMaxQueuedJobs) continue;  // overloaded: the client retries
        jobs_.push_back(std::move(job));
        jobs_cv_.notify_one();
      }
    }
  }
}

void ContentServer::WorkerLoop(ServableVersionReader* versions) {
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(ReplyEndpoint(this));
  while (true) {
    Job job;
    {
      std::unique_lock lock(jobs_mu_);
      jobs_cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
      if (stop_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    v1::ContentReply reply = Handle(job.request, *versions);
    reply.set_protocol_version(kProtocolVersion);
    reply.set_request_id(job.request.request_id());
    std::vector<zmq::message_t> out;
    out.emplace_back(job.identity.data(), job.identity.size());
    out.push_back(ToFrame(reply));
    for (size_t i = 0; i < out.size(); ++i) {
      push.send(out[i], i + 1 < out.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
}

v1::ContentReply ContentServer::Handle(const v1::ContentRequest& request,
                                       ServableVersionReader& versions) {
  if (Status s = ValidateRepoName(request.repo()); !s.ok()) return Error(s.message());
  switch (request.body_case()) {
    case v1::ContentRequest::kRange:
      return ServeRange(request, versions);
    case v1::ContentRequest::kDelta:
      return StartDelta(request, versions);
    case v1::ContentRequest::kDeltaRange:
      return ServeDeltaRange(request);
    case v1::ContentRequest::kObject:
      return ServeObject(request);
    case v1::ContentRequest::kRanges: {
      // Each range is served exactly as its own RangeRequest would be; only
      // the bounds of the whole are checked here.
      if (Status s = CheckRangesRequest(request.ranges()); !s.ok()) return Error(s.message());
      v1::ContentReply reply;
      reply.set_ok(true);
      v1::ContentRequest one;
      one.set_repo(request.repo());
      for (const v1::RangeRequest& range : request.ranges().ranges()) {
        *one.mutable_range() = range;
        v1::ContentReply part = ServeRange(one, versions);
        v1::RangeReply* out = reply.add_parts();
        out->set_ok(part.ok());
        if (!part.ok()) {
          out->set_error(part.error().substr(0, kMaxPartErrorBytes));
          continue;
        }
        out->set_total_size(part.total_size());
        out->set_offset(part.offset());
        *out->mutable_data() = std::move(*part.mutable_data());
      }
      return reply;
    }
    default:
      return Error("empty content request");
  }
}

void ContentServer::LogRefusal(const std::string& repo, const std::string& sha256,
                               const std::string& path, const std::string& reason) {
  const auto now = std::chrono::steady_clock::now();
  const std::string key = repo + '\0' + sha256 + '\0' + reason;
  {
    std::lock_guard lock(refusals_mu_);
    if (refusals_logged_.size() > 4096) refusals_logged_.clear();  // bounded
    auto [it, fresh] = refusals_logged_.emplace(key, now);
    if (!fresh && now - it->second < std::chrono::minutes(1)) return;
    it->second = now;
  }
  MC_LOG(warning) << "refused content request repo=" << repo << " path=" << Describe(path, sha256)
                  << ": " << reason;
}

Result<ContentServer::OpenVersion> ContentServer::OpenPublished(ServableVersionReader& versions,
                                                                const std::string& repo,
                                                                const std::string& sha256,
                                                                const std::string& path) {
  MC_RETURN_IF_ERROR(ValidateRelativePath(path));
  if (sha256.size() != kSha256Size) {
    return Status::Rejected(
        "files are requested by the SHA-256 of a published version; the "
        "request for " +
        EscapeForLog(path) + " names none");
  }
  auto found = versions.Find(repo, sha256, path, options_.keep_versions);
  if (!found.ok()) {
    MC_LOG(error) << "cannot read the version table: " << found.status().ToString();
    return Status::Unavailable("the broker cannot read its version table right now");
  }
  if (found->paths.empty()) {
    return Status::Rejected(Describe(path, sha256) +
                            " is not a version any published manifest of " + repo +
                            " names (not published, or no longer kept)");
  }
  if (found->object) {
    const std::filesystem::path object = options_.objects->PathOf(repo, sha256);
    auto file = OpenStateFile(object);
    if (file.ok() && SameContent(found->object->identity, IdentityOf(file->st))) {
      return OpenVersion{std::move(*file), found->object->identity, object, ""};
    }
  }
  bool changed = false;     // a path the head names holds other bytes now
  bool superseded = false;  // a path that named it before holds something else now
  Status refused;           // a symlink or other refusal on the way, worth telling
  for (const PublishedVersion& at : found->paths) {
    auto file = OpenInTree(options_.tree_root, repo, at.path);
    if (file.ok()) {
      if (SameContent(at.identity, IdentityOf(file->st))) {
        return OpenVersion{std::move(*file), at.identity, options_.tree_root / repo / at.path,
                           at.path};
      }
      (at.retired_serial == 0 ? changed : superseded) = true;
    } else if (file.status().code() == Status::Code::kRejected && refused.ok()) {
      refused = file.status();
    }
  }
  if (changed) {
    return Status::Rejected(Describe(path, sha256) +
                            " changed since it was published; refusing to serve it");
  }
  if (!refused.ok()) return Status::Rejected(Describe(path, sha256) + ": " + refused.message());
  return Status::Rejected(
      Describe(path, sha256) +
      (superseded ? " was superseded in the tree" : " is no longer in the tree") +
      " and no retained copy of it is left");
}

bool ContentServer::StillPublished(const std::string& repo, const OpenVersion& open) const {
  struct stat now {};
  if (::fstat(open.file.fd.get(), &now) != 0 || !SameContent(open.identity, IdentityOf(now))) {
    return false;
  }
  // The name it was opened by must still lead to the same inode.
  auto again = open.tree_path.empty() ? OpenStateFile(open.source)
                                      : OpenInTree(options_.tree_root, repo, open.tree_path);
  return again.ok() && SameContent(open.identity, IdentityOf(again->st));
}

v1::ContentReply ContentServer::ServeRange(const v1::ContentRequest& request,
                                           ServableVersionReader& versions) {
  const v1::RangeRequest& range = request.range();
  auto open = OpenPublished(versions, request.repo(), range.sha256(), range.path());
  if (!open.ok()) {
    LogRefusal(request.repo(), range.sha256(), range.path(), open.status().message());
    return Error(open.status().message());
  }
  v1::ContentReply reply = ReadRange(open->file.fd.get(), range.offset(), range.length(),
                                     Describe(range.path(), range.sha256()), &open->identity);
  if (!reply.ok()) LogRefusal(request.repo(), range.sha256(), range.path(), reply.error());
  return reply;
}

v1::ContentReply ContentServer::ServeObject(const v1::ContentRequest& request) {
  const v1::ObjectRequest& object = request.object();
  if (object.sha256().size() != kSha256Size) {
    return Error("a manifest object is named by a 32-byte SHA-256");
  }
  const fs::path file = ManifestStore::ObjectPath(options_.objects_dir, object.sha256());
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) {
    return Error("manifest object " + ToHex(object.sha256()).substr(0, 16) + " is not stored here");
  }
  return ReadRange(fd.get(), object.offset(), object.length(), "manifest object");
}

ContentServer::DeltaFile::~DeltaFile() {
  if (file.empty()) return;
  std::error_code ec;
  fs::remove(file, ec);
}

v1::ContentReply ContentServer::StartDelta(const v1::ContentRequest& request,
                                           ServableVersionReader& versions) {
  ExpireDeltas();
  const v1::DeltaRequest& req = request.delta();
  if (Status s = CheckSignature(req.signature(), kMaxContentRequestBytes); !s.ok()) {
    LogRefusal(request.repo(), req.expected_sha256(), req.path(),
               "delta signature: " + s.message());
    return Error(s.message());
  }
  auto open = OpenPublished(versions, request.repo(), req.expected_sha256(), req.path());
  if (!open.ok()) {
    LogRefusal(request.repo(), req.expected_sha256(), req.path(), open.status().message());
    return Error(open.status().message());
  }
  // The same file version and the same signature give the same delta.
  const FileIdentity& version = open->identity;
  std::string key =
      request.repo() + '\0' + req.expected_sha256() + '\0' + Sha256Of(req.signature());
  for (uint64_t v :
       {version.dev, version.ino, version.size, static_cast<uint64_t>(version.mtime_ns)}) {
    key += '\0' + std::to_string(v);
  }

  std::promise<DeltaPtr> promise;
  std::shared_future<DeltaPtr> future;
  bool compute = false;
  uint64_t file_number = 0;
  {
    std::lock_guard lock(deltas_mu_);
    auto it = delta_cache_.find(key);
    if (it == delta_cache_.end()) {
      future = promise.get_future().share();
      delta_cache_.emplace(key, CachedDelta{future, std::chrono::steady_clock::now()});
      compute = true;
      file_number = next_delta_file_++;
    } else {
      future = it->second.delta;
    }
  }
  if (compute) {
    auto delta = std::make_shared<DeltaFile>();
    const fs::path out = options_.scratch_dir / ("delta-" + std::to_string(file_number));
    DeltaStats stats;
    // ComputeDelta opens by name (not following a symlink at the last
    // component); the version is checked again afterwards, so a name that
    // was swapped meanwhile, or bytes that changed, give no delta.
    Status s = ComputeDelta(req.signature(), open->source, out, &stats);
    if (s.ok() && !StillPublished(request.repo(), *open)) {
      s = Status::Rejected(Describe(req.path(), req.expected_sha256()) +
                           " changed since it was published; refusing to serve it");
    }
    std::error_code ec;
    const uint64_t size = s.ok() ? fs::file_size(out, ec) : 0;
    if (s.ok() && !ec) {
      delta->file = out;
      delta->size = size;
      MC_LOG(debug) << "delta repo=" << request.repo() << " path=" << EscapeForLog(req.path())
                    << " size=" << size << " literal=" << stats.literal_bytes
                    << " copied=" << stats.copied_bytes;
    } else {
      fs::remove(out, ec);
      delta->error = "delta of " + EscapeForLog(req.path()) + ": " +
                     (s.ok() ? "output vanished" : s.message());
      std::lock_guard lock(deltas_mu_);
      delta_cache_.erase(key);  // do not cache failures
    }
    promise.set_value(delta);
  }
  DeltaPtr delta = future.get();
  if (!delta->error.empty()) return Error(delta->error);
  uint64_t id;
  {
    std::lock_guard lock(deltas_mu_);
    id = next_transfer_id_++;
    transfers_[id] = Transfer{delta, std::chrono::steady_clock::now()};
  }
  v1::ContentReply reply;
  reply.set_ok(true);
  reply.set_transfer_id(id);
  reply.set_total_size(delta->size);
  return reply;
}

v1::ContentReply ContentServer::ServeDeltaRange(const v1::ContentRequest& request) {
  const v1::DeltaRangeRequest& range = request.delta_range();
  DeltaPtr delta;
  {
    std::lock_guard lock(deltas_mu_);
    auto it = transfers_.find(range.transfer_id());
    if (it == transfers_.end()) return Error("unknown or expired delta transfer");
    if (range.release()) {
      transfers_.erase(it);
      v1::ContentReply reply;
      reply.set_ok(true);
      return reply;
    }
    it->second.used = std::chrono::steady_clock::now();  // in use: keep it
    delta = it->second.delta;
  }
  UniqueFd fd(::open(delta->file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Error("delta transfer is gone");
  return ReadRange(fd.get(), range.offset(), range.length(), "delta");
}

void ContentServer::ExpireDeltas() {
  const auto now = std::chrono::steady_clock::now();
  std::vector<DeltaPtr> dropped;  // deleted outside the lock
  std::lock_guard lock(deltas_mu_);
  for (auto it = transfers_.begin(); it != transfers_.end();) {
    if (now - it->second.used > options_.delta_ttl) {
      dropped.push_back(std::move(it->second.delta));
      it = transfers_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = delta_cache_.begin(); it != delta_cache_.end();) {
    if (now - it->second.created > options_.delta_ttl) {
      it = delta_cache_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace mirrorcast
