#include "broker/content_server.h"

#include "broker/manifest_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <system_error>

#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/delta/delta.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"
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

// Opens a regular file below `root` without following a symlink anywhere on the way.
Result<UniqueFd> OpenServedFile(const fs::path& root, const std::string& rel) {
  MC_RETURN_IF_ERROR(ValidateRelativePath(rel));
  MC_RETURN_IF_ERROR(CheckNoSymlinkParents(root, rel));
  UniqueFd fd(::open((root / rel).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("open " + rel, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("stat " + rel, errno);
  if (!S_ISREG(st.st_mode)) return Status::NotFound(rel + " is not a regular file");
  return fd;
}

// Answers a byte range of an open file.
v1::ContentReply ReadRange(int fd, uint64_t offset, uint32_t length, const std::string& what) {
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
  reply.set_ok(true);
  reply.set_total_size(size);
  reply.set_offset(offset);
  return reply;
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
  stop_ = false;
  io_thread_ = std::thread([this] { IoLoop(); });
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
  return Status::Ok();
}

void ContentServer::Stop() {
  if (!io_thread_.joinable()) return;
  stop_ = true;
  jobs_cv_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
  io_thread_.join();
  router_.close();
  std::lock_guard lock(deltas_mu_);
  transfers_.clear();
  delta_cache_.clear();
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

void ContentServer::WorkerLoop(int index) {
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
    v1::ContentReply reply = Handle(job.request);
    reply.set_protocol_version(kProtocolVersion);
    reply.set_request_id(job.request.request_id());
    std::vector<zmq::message_t> out;
    out.emplace_back(job.identity.data(), job.identity.size());
    out.push_back(ToFrame(reply));
    for (size_t i = 0; i < out.size(); ++i) {
      push.send(out[i], i + 1 < out.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  (void)index;
}

v1::ContentReply ContentServer::Handle(const v1::ContentRequest& request) {
  if (Status s = ValidateRepoName(request.repo()); !s.ok()) return Error(s.message());
  switch (request.body_case()) {
    case v1::ContentRequest::kRange:
      return ServeRange(request);
    case v1::ContentRequest::kDelta:
      return StartDelta(request);
    case v1::ContentRequest::kDeltaRange:
      return ServeDeltaRange(request);
    case v1::ContentRequest::kObject:
      return ServeObject(request);
    default:
      return Error("empty content request");
  }
}

v1::ContentReply ContentServer::ServeRange(const v1::ContentRequest& request) {
  const v1::RangeRequest& range = request.range();
  auto fd = OpenServedFile(options_.tree_root / request.repo(), range.path());
  if (!fd.ok()) return Error(fd.status().message());
  return ReadRange(fd->get(), range.offset(), range.length(), range.path());
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

v1::ContentReply ContentServer::StartDelta(const v1::ContentRequest& request) {
  ExpireDeltas();
  const v1::DeltaRequest& req = request.delta();
  if (Status s = CheckSignature(req.signature(), kMaxContentRequestBytes); !s.ok()) {
    MC_LOG(warning) << "refused delta signature for " << request.repo() << "/" << req.path() << ": "
                    << s.message();
    return Error(s.message());
  }
  auto fd = OpenServedFile(options_.tree_root / request.repo(), req.path());
  if (!fd.ok()) return Error(fd.status().message());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return Error("stat " + req.path() + " failed");
  // The same file version and the same signature give the same delta.
  std::string key = request.repo() + '\0' + req.path() + '\0' + Sha256Of(req.signature());
  for (int64_t v :
       {static_cast<int64_t>(st.st_size), static_cast<int64_t>(st.st_ino),
        static_cast<int64_t>(st.st_mtim.tv_sec), static_cast<int64_t>(st.st_mtim.tv_nsec),
        static_cast<int64_t>(st.st_ctim.tv_sec), static_cast<int64_t>(st.st_ctim.tv_nsec)}) {
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
    // OpenServedFile checked every parent; ComputeDelta opens the last
    // component without following a symlink either.
    const fs::path source = options_.tree_root / request.repo() / req.path();
    Status s = ComputeDelta(req.signature(), source, out, &stats);
    std::error_code ec;
    const uint64_t size = s.ok() ? fs::file_size(out, ec) : 0;
    if (s.ok() && !ec) {
      delta->file = out;
      delta->size = size;
      MC_LOG(debug) << "delta repo=" << request.repo() << " path=" << req.path() << " size=" << size
                    << " literal=" << stats.literal_bytes << " copied=" << stats.copied_bytes;
    } else {
      fs::remove(out, ec);
      delta->error = "delta of " + req.path() + ": " + (s.ok() ? "output vanished" : s.message());
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
