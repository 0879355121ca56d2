#include "broker/content_server.h"

#include "broker/manifest_store.h"

#include <fcntl.h>
#include <openssl/rand.h>
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

constexpr auto kLogWindow = std::chrono::minutes(1);
constexpr int kRefusalLinesPerPeer = 10;  // refused files logged per peer a minute
// A peer whose reply queue was full gets no work for this long.
constexpr auto kCongestedFor = std::chrono::seconds(1);
constexpr size_t kTransferTokenBytes = 16;

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

// 16 bytes from OpenSSL's CSPRNG; empty if it fails (the delta is refused).
std::string NewTransferToken() {
  std::string token(kTransferTokenBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(token.data()), static_cast<int>(token.size())) !=
      1) {
    return std::string();
  }
  return token;
}

zmq::message_t RefusalFrame(uint64_t request_id, const std::string& message) {
  v1::ContentReply reply = Error(message);
  reply.set_request_id(request_id);
  reply.set_protocol_version(kProtocolVersion);
  return ToFrame(reply);
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
  SecureServerSocket(router_, options_.curve, kZapDomainContent);
  // The send high-water mark is per peer: it bounds the replies queued for
  // one peer that does not read them. Mandatory routing makes a full queue
  // an error we see (and log) instead of a silent drop.
  const uint64_t replies =
      std::max<uint64_t>(1, options_.limits.reply_bytes_per_peer / kMaxContentReplyBytes);
  router_.set(zmq::sockopt::sndhwm, static_cast<int>(std::min<uint64_t>(replies, 100000)));
  router_.set(zmq::sockopt::rcvhwm, 100);  // per peer; the I/O thread drains it at once
  router_.set(zmq::sockopt::router_mandatory, 1);
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
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  jobs_cv_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
  readers_.clear();
  io_thread_.join();
  router_.close();
  std::lock_guard lock(mu_);
  transfers_.clear();
  delta_cache_.clear();
  peers_.clear();
  ready_.clear();
  in_flight_ = 0;
  in_flight_bytes_ = 0;
  running_deltas_ = 0;
  scratch_reserved_ = 0;
}

size_t ContentServer::MaxDeltas() const {
  if (options_.limits.deltas > 0) return options_.limits.deltas;
  return static_cast<size_t>(std::max(1, options_.workers / 2));
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
  auto next_expiry = Now();
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
        // [identity, peer, reply] from a worker.
        auto frames = ReceiveMultipart(replies);
        if (frames.size() != 3) break;
        const std::string identity = frames[0].to_string();
        const std::string peer = frames[1].to_string();
        {
          std::lock_guard lock(mu_);
          auto it = peers_.find(peer);
          if (it != peers_.end() && it->second.in_flight > 0) --it->second.in_flight;
          if (in_flight_ > 0) --in_flight_;
          ReleasePeerIfIdle(peer);
        }
        SendReply(identity, peer, frames[2]);
      }
    }
    if (items[0].revents & ZMQ_POLLIN) {
      for (int i = 0; i < 1000; ++i) {
        auto frames = ReceiveMultipart(router_);
        if (frames.empty()) break;
        if (frames.size() != 2) continue;  // not our protocol
        Admit(frames);
      }
    }
    if (Now() >= next_expiry) {
      ExpireDeltas();
      next_expiry = Now() + std::chrono::seconds(1);
    }
  }
}

void ContentServer::SendReply(const std::string& identity, const std::string& peer,
                              zmq::message_t& reply) {
  zmq::message_t id(identity.data(), identity.size());
  try {
    if (!router_.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      // Its queue is full: it is not reading. Its stall timeout and resume
      // take care of an honest client; nobody else waits. For a while its
      // new requests get no work either.
      LogLimit(peer, "replies queued for it exceed " +
                         std::to_string(options_.limits.reply_bytes_per_peer) +
                         " bytes; dropping replies");
      std::lock_guard lock(mu_);
      if (congested_.size() > 4096) congested_.clear();  // bounded
      congested_[peer] = Now() + kCongestedFor;
      return;
    }
    (void)router_.send(reply, zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    // EHOSTUNREACH: the peer is gone; nobody is left to answer.
    if (e.num() != EHOSTUNREACH) MC_LOG(warning) << "content reply dropped: " << e.what();
  }
}

void ContentServer::Admit(std::vector<zmq::message_t>& frames) {
  const std::string identity = frames[0].to_string();
  const std::string peer = PeerOf(frames);
  const size_t bytes = frames[1].size();
  const ContentLimits& limits = options_.limits;
  // Decided under mu_, sent after it (SendReply takes mu_ itself).
  std::string limit;
  std::string refusal;
  auto refuse = [&](uint64_t request_id) {
    LogLimit(peer, limit);
    zmq::message_t reply = RefusalFrame(request_id, refusal);
    SendReply(identity, peer, reply);
  };
  // The cheap checks first, before the frame costs a parse.
  auto peek = PeekRequest(frames[1]);
  const uint64_t request_id = peek.ok() ? peek->request_id : 0;
  if (options_.curve) {
    // The handshake passed ZAP; the key may have been removed since (SIGHUP).
    auto user_id = UserIdOf(frames.back());
    if (!user_id || options_.allow == nullptr || !options_.allow->Check(*user_id)) {
      limit = "key no longer on the allow-list";
      refusal = "refused: this client's key is not on the broker's allow-list";
      refuse(request_id);
      return;
    }
  }
  {
    std::lock_guard lock(mu_);
    auto c = congested_.find(peer);
    if (c != congested_.end() && Now() >= c->second) {
      congested_.erase(c);
      c = congested_.end();
    }
    auto it = peers_.find(peer);
    const size_t mine = it == peers_.end() ? 0 : it->second.in_flight;
    if (c != congested_.end()) {
      // Its reply would be dropped too; the refusal costs nothing more.
      limit = "replies not read";
      refusal = "refused: replies to this peer are not being read";
    } else if (mine >= limits.requests_per_peer) {
      limit = "requests in flight";
      refusal = "refused: more than " + std::to_string(limits.requests_per_peer) +
                " requests in flight from this peer; wait for replies before sending more";
    } else if (in_flight_ >= limits.requests || in_flight_bytes_ + bytes > limits.request_bytes) {
      limit = "server requests in flight";
      refusal = "refused: the broker has too many requests in flight; retry later";
    }
  }
  if (!refusal.empty()) {
    refuse(request_id);
    return;
  }
  Job job;
  job.identity = identity;
  job.peer = peer;
  job.bytes = bytes;
  Status parsed = peek.status();
  if (parsed.ok()) parsed = ParseFrame(frames[1], kMaxContentRequestBytes, &job.request);
  if (!parsed.ok() || job.request.protocol_version() != kProtocolVersion) {
    zmq::message_t reply =
        RefusalFrame(request_id, parsed.ok() ? "unsupported protocol version" : parsed.message());
    SendReply(identity, peer, reply);
    return;
  }
  const bool delta = job.request.has_delta();
  {
    std::lock_guard lock(mu_);
    Peer& p = peers_[peer];
    if (delta && p.deltas >= limits.deltas_per_peer) {
      limit = "delta requests in flight";
      refusal = "refused: more than " + std::to_string(limits.deltas_per_peer) +
                " delta requests in flight from this peer";
      ReleasePeerIfIdle(peer);
    } else {
      ++p.in_flight;
      if (delta) ++p.deltas;
      ++in_flight_;
      in_flight_bytes_ += bytes;
      p.queue.push_back(std::move(job));
      if (!p.ready) {
        p.ready = true;
        ready_.push_back(peer);
      }
    }
  }
  if (!refusal.empty()) {
    refuse(request_id);
    return;
  }
  jobs_cv_.notify_one();
}

void ContentServer::ReleasePeerIfIdle(const std::string& peer) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return;
  const Peer& p = it->second;
  if (p.in_flight == 0 && p.queue.empty() && !p.ready && p.deltas == 0 && p.transfers == 0 &&
      p.scratch_bytes == 0) {
    peers_.erase(it);
  }
}

bool ContentServer::TakeJob(Job* job) {
  const size_t max_deltas = MaxDeltas();
  for (size_t tries = ready_.size(); tries > 0; --tries) {
    std::string peer = std::move(ready_.front());
    ready_.pop_front();
    Peer& p = peers_[peer];
    auto runnable = std::find_if(p.queue.begin(), p.queue.end(), [&](const Job& j) {
      return !j.request.has_delta() || running_deltas_ < max_deltas;
    });
    if (runnable == p.queue.end()) {
      ready_.push_back(std::move(peer));  // only deltas waiting for a slot
      continue;
    }
    *job = std::move(*runnable);
    p.queue.erase(runnable);
    if (job->request.has_delta()) ++running_deltas_;
    if (p.queue.empty()) {
      p.ready = false;
    } else {
      ready_.push_back(std::move(peer));  // its next job after everyone else's
    }
    return true;
  }
  return false;
}

void ContentServer::WorkerLoop(ServableVersionReader* versions) {
  zmq::socket_t push(context_, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(ReplyEndpoint(this));
  while (true) {
    Job job;
    {
      std::unique_lock lock(mu_);
      jobs_cv_.wait(lock, [&] { return stop_ || TakeJob(&job); });
      if (stop_) return;
    }
    if (options_.before_job) options_.before_job(job.peer, job.request);
    v1::ContentReply reply = Handle(job, *versions);
    reply.set_protocol_version(kProtocolVersion);
    reply.set_request_id(job.request.request_id());
    {
      std::lock_guard lock(mu_);
      in_flight_bytes_ -= std::min<uint64_t>(in_flight_bytes_, job.bytes);
      if (job.request.has_delta()) {
        if (running_deltas_ > 0) --running_deltas_;
        auto it = peers_.find(job.peer);
        if (it != peers_.end() && it->second.deltas > 0) --it->second.deltas;
      }
    }
    if (job.request.has_delta()) jobs_cv_.notify_all();  // a delta slot is free
    std::vector<zmq::message_t> out;
    out.emplace_back(job.identity.data(), job.identity.size());
    out.emplace_back(job.peer.data(), job.peer.size());
    out.push_back(ToFrame(reply));
    for (size_t i = 0; i < out.size(); ++i) {
      push.send(out[i], i + 1 < out.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
}

v1::ContentReply ContentServer::Handle(const Job& job, ServableVersionReader& versions) {
  const v1::ContentRequest& request = job.request;
  if (Status s = ValidateRepoName(request.repo()); !s.ok()) return Error(s.message());
  switch (request.body_case()) {
    case v1::ContentRequest::kRange:
      return ServeRange(request, versions, job.peer);
    case v1::ContentRequest::kDelta:
      return StartDelta(job, versions);
    case v1::ContentRequest::kDeltaRange:
      return ServeDeltaRange(job);
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
        v1::ContentReply part = ServeRange(one, versions, job.peer);
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

void ContentServer::LogRefusal(const std::string& peer, const std::string& repo,
                               const std::string& sha256, const std::string& path,
                               const std::string& reason) {
  const auto now = Now();
  const std::string key = repo + '\0' + sha256 + '\0' + reason;
  bool last = false;  // this peer's last line this minute
  {
    std::lock_guard lock(logged_mu_);
    // A peer asking for thousands of different refused files gets a few
    // lines a minute, not one per file.
    if (refusal_budget_.size() > 4096) refusal_budget_.clear();  // bounded
    auto& [since, lines] = refusal_budget_[peer];
    if (now - since >= kLogWindow) {
      since = now;
      lines = 0;
    }
    if (lines >= kRefusalLinesPerPeer) return;
    if (refusals_logged_.size() > 4096) refusals_logged_.clear();  // bounded
    auto [it, fresh] = refusals_logged_.emplace(key, now);
    if (!fresh && now - it->second < kLogWindow) return;
    it->second = now;
    last = ++lines == kRefusalLinesPerPeer;
  }
  // Reasons carry peer text only escaped (Describe, ValidateRelativePath):
  // cut, not escaped twice.
  MC_LOG(warning) << "refused content request repo=" << EscapeForLog(repo, 128)
                  << " path=" << Describe(path, sha256) << ": " << reason.substr(0, 1024)
                  << (last ? " (more refusals for this peer this minute are not logged)" : "");
}

void ContentServer::LogLimit(const std::string& peer, const std::string& limit,
                             const std::string& detail) {
  const auto now = Now();
  {
    std::lock_guard lock(logged_mu_);
    if (limits_logged_.size() > 4096) limits_logged_.clear();  // bounded
    auto [it, fresh] = limits_logged_.emplace(peer + '\0' + limit, now);
    if (!fresh && now - it->second < kLogWindow) return;
    it->second = now;
  }
  MC_LOG(warning) << "content peer " << PeerForLog(peer) << " refused: " << limit
                  << (detail.empty() ? "" : " (first: " + detail.substr(0, 512) + ")")
                  << " (logged once a minute)";
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
                                           ServableVersionReader& versions,
                                           const std::string& peer) {
  const v1::RangeRequest& range = request.range();
  auto open = OpenPublished(versions, request.repo(), range.sha256(), range.path());
  if (!open.ok()) {
    LogRefusal(peer, request.repo(), range.sha256(), range.path(), open.status().message());
    return Error(open.status().message());
  }
  v1::ContentReply reply = ReadRange(open->file.fd.get(), range.offset(), range.length(),
                                     Describe(range.path(), range.sha256()), &open->identity);
  if (!reply.ok()) {
    LogRefusal(peer, request.repo(), range.sha256(), range.path(), reply.error());
  }
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
  if (scratch_bytes != nullptr) scratch_bytes->fetch_sub(size);
  if (file.empty()) return;
  std::error_code ec;
  fs::remove(file, ec);
}

v1::ContentReply ContentServer::StartDelta(const Job& job, ServableVersionReader& versions) {
  const v1::ContentRequest& request = job.request;
  const v1::DeltaRequest& req = request.delta();
  const ContentLimits& limits = options_.limits;
  auto open = OpenPublished(versions, request.repo(), req.expected_sha256(), req.path());
  if (!open.ok()) {
    LogRefusal(job.peer, request.repo(), req.expected_sha256(), req.path(),
               open.status().message());
    return Error(open.status().message());
  }
  // Before any work: the signature's header and size against this file.
  const uint64_t file_size = open->identity.size;
  if (auto shape = CheckSignatureFor(req.signature(), file_size); !shape.ok()) {
    // Logged per peer, not per reason: the reason names sizes a peer picks.
    LogLimit(job.peer, "refused delta signatures", shape.status().message());
    return Error("refused: " + shape.status().message());
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
  uint64_t budget = 0;                         // scratch bytes this computation may write
  std::map<std::string, CachedDelta> evicted;  // deleted outside the lock
  {
    std::lock_guard lock(mu_);
    Peer& p = peers_[job.peer];
    if (p.transfers >= limits.transfers_per_peer) {
      LogLimit(job.peer, "open delta transfers");
      return Error("refused: more than " + std::to_string(limits.transfers_per_peer) +
                   " open delta transfers for this peer; release one first");
    }
    auto it = delta_cache_.find(key);
    if (it == delta_cache_.end()) {
      const uint64_t used = scratch_bytes_.load() + scratch_reserved_;
      if (used >= limits.scratch_bytes) {
        evicted.swap(delta_cache_);  // deltas nobody holds a transfer of go first
      }
      const uint64_t global_left =
          limits.scratch_bytes -
          std::min(limits.scratch_bytes, scratch_bytes_.load() + scratch_reserved_);
      const uint64_t peer_left =
          limits.scratch_bytes_per_peer - std::min(limits.scratch_bytes_per_peer, p.scratch_bytes);
      // A delta larger than the file is refused by the client anyway.
      budget = std::min({file_size + 1, global_left, peer_left});
      if (budget == 0) {
        LogLimit(job.peer,
                 global_left == 0 ? "delta scratch bytes (all peers)" : "delta scratch bytes");
        return Error(std::string("refused: the delta scratch space ") +
                     (global_left == 0 ? "of the broker" : "for this peer") +
                     " is used up; fetch the file whole");
      }
      scratch_reserved_ += budget;
      p.scratch_bytes += budget;
      future = promise.get_future().share();
      delta_cache_.emplace(key, CachedDelta{future, Now()});
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
    DeltaLimits bounds;
    bounds.max_delta_bytes = budget;
    bounds.should_stop = [this] { return stop_.load(); };
    // ComputeDelta opens by name (not following a symlink at the last
    // component); the version is checked again afterwards, so a name that
    // was swapped meanwhile, or bytes that changed, give no delta.
    Status s = ComputeDelta(req.signature(), open->source, out, &stats, bounds);
    if (s.ok() && !StillPublished(request.repo(), *open)) {
      s = Status::Rejected(Describe(req.path(), req.expected_sha256()) +
                           " changed since it was published; refusing to serve it");
    }
    std::error_code ec;
    const uint64_t size = s.ok() ? fs::file_size(out, ec) : 0;
    if (s.ok() && !ec) {
      delta->file = out;
      delta->size = size;
      delta->scratch_bytes = &scratch_bytes_;
      scratch_bytes_.fetch_add(size);
      MC_LOG(debug) << "delta repo=" << request.repo() << " path=" << EscapeForLog(req.path())
                    << " size=" << size << " literal=" << stats.literal_bytes
                    << " copied=" << stats.copied_bytes;
    } else {
      fs::remove(out, ec);
      if (s.code() == Status::Code::kResourceExhausted && budget > file_size) {
        s = Status::ResourceExhausted("the delta would be larger than the file; fetch it whole");
      } else if (s.code() == Status::Code::kResourceExhausted) {
        s = Status::ResourceExhausted("the delta outgrew the scratch space left; fetch it whole");
      }
      delta->error = "delta of " + EscapeForLog(req.path()) + ": " +
                     (s.ok() ? "output vanished" : s.message());
    }
    {
      std::lock_guard lock(mu_);
      scratch_reserved_ -= std::min(scratch_reserved_, budget);
      auto it = peers_.find(job.peer);
      if (it != peers_.end())
        it->second.scratch_bytes -= std::min(it->second.scratch_bytes, budget);
      if (!delta->error.empty()) delta_cache_.erase(key);  // do not cache failures
    }
    promise.set_value(delta);
  }
  DeltaPtr delta = future.get();
  if (!delta->error.empty()) return Error(delta->error);
  const std::string token = NewTransferToken();
  if (token.empty()) {
    MC_LOG(error) << "RAND_bytes failed; refusing a delta transfer";
    return Error("the broker could not make a transfer token");
  }
  {
    std::lock_guard lock(mu_);
    Peer& p = peers_[job.peer];
    ++p.transfers;
    p.scratch_bytes += delta->size;
    transfers_[token] = Transfer{job.peer, delta, Now()};
  }
  v1::ContentReply reply;
  reply.set_ok(true);
  reply.set_transfer_token(token);
  reply.set_total_size(delta->size);
  return reply;
}

v1::ContentReply ContentServer::ServeDeltaRange(const Job& job) {
  const v1::DeltaRangeRequest& range = job.request.delta_range();
  DeltaPtr delta;
  DeltaPtr released;  // dropped outside the lock (it may delete the file)
  {
    std::lock_guard lock(mu_);
    auto it = transfers_.find(range.transfer_token());
    if (it == transfers_.end() || it->second.peer != job.peer) {
      // Another peer's token is answered exactly as an unknown one.
      if (it != transfers_.end()) LogLimit(job.peer, "asked for another peer's delta transfer");
      return Error("unknown or expired delta transfer");
    }
    if (range.release()) {
      auto p = peers_.find(job.peer);
      if (p != peers_.end()) {
        p->second.transfers -= std::min<size_t>(p->second.transfers, 1);
        p->second.scratch_bytes -= std::min(p->second.scratch_bytes, it->second.delta->size);
      }
      released = std::move(it->second.delta);
      transfers_.erase(it);
      v1::ContentReply reply;
      reply.set_ok(true);
      return reply;
    }
    it->second.used = Now();  // in use: keep it
    delta = it->second.delta;
  }
  UniqueFd fd(::open(delta->file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Error("delta transfer is gone");
  return ReadRange(fd.get(), range.offset(), range.length(), "delta");
}

void ContentServer::ExpireDeltas() {
  const auto now = Now();
  const auto ttl = options_.limits.delta_ttl;
  std::vector<DeltaPtr> dropped;  // deleted outside the lock
  std::vector<std::shared_future<DeltaPtr>> uncached;
  std::lock_guard lock(mu_);
  for (auto it = transfers_.begin(); it != transfers_.end();) {
    if (now - it->second.used > ttl) {
      auto p = peers_.find(it->second.peer);
      if (p != peers_.end()) {
        p->second.transfers -= std::min<size_t>(p->second.transfers, 1);
        p->second.scratch_bytes -= std::min(p->second.scratch_bytes, it->second.delta->size);
      }
      const std::string peer = it->second.peer;
      dropped.push_back(std::move(it->second.delta));
      it = transfers_.erase(it);
      ReleasePeerIfIdle(peer);
    } else {
      ++it;
    }
  }
  for (auto it = delta_cache_.begin(); it != delta_cache_.end();) {
    if (now - it->second.created > ttl) {
      uncached.push_back(std::move(it->second.delta));
      it = delta_cache_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace mirrorcast
