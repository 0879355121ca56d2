#include "core/net/content_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <vector>

#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

using Millis = std::chrono::milliseconds;

namespace {

// Replies carry at most one chunk plus protobuf framing.
constexpr size_t kMaxReplyBytes = kMaxChunk + 4096;

Status WriteAllAt(int fd, std::string_view data, uint64_t offset, const std::string& what) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n =
        ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("write " + what, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<UniqueFd> CreateDest(const std::filesystem::path& dest) {
  UniqueFd fd(::open(dest.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno("create " + dest.string(), errno);
  return fd;
}

}  // namespace

ContentClient::ContentClient(zmq::context_t& context, HostPort content, std::string repo,
                             ContentClientOptions options)
    : content_(std::move(content)),
      repo_(std::move(repo)),
      options_(options),
      socket_(context, zmq::socket_type::dealer) {
  if (options_.chunk_bytes == 0 || options_.chunk_bytes > kMaxChunk)
    options_.chunk_bytes = kMaxChunk;
  if (options_.credit < 1) options_.credit = 1;
  ConfigureSocket(socket_, content_, static_cast<int64_t>(kMaxReplyBytes));
  socket_.set(zmq::sockopt::reconnect_ivl, 100);
  socket_.set(zmq::sockopt::reconnect_ivl_max, 2000);
  socket_.connect(content_.Endpoint());
}

namespace {

// Waits for one reply on `socket` within `timeout`; nullopt on timeout.
Result<std::optional<v1::ContentReply>> AwaitReply(zmq::socket_t& socket, Millis timeout) {
  zmq::pollitem_t item{static_cast<void*>(socket), 0, ZMQ_POLLIN, 0};
  int n = zmq::poll(&item, 1, timeout);
  if (n <= 0 || !(item.revents & ZMQ_POLLIN)) return std::optional<v1::ContentReply>();
  auto frames = ReceiveMultipart(socket);
  if (frames.empty()) return std::optional<v1::ContentReply>();
  v1::ContentReply reply;
  MC_RETURN_IF_ERROR(ParseFrame(frames.back(), kMaxReplyBytes, &reply));
  return std::optional<v1::ContentReply>(std::move(reply));
}

bool SendRequest(zmq::socket_t& socket, const v1::ContentRequest& request) {
  zmq::message_t frame = ToFrame(request);
  // The DEALER queues while connecting; a full queue means the broker is not
  // reading, which the stall timeout turns into an error.
  return static_cast<bool>(socket.send(frame, zmq::send_flags::dontwait));
}

}  // namespace

Result<v1::ContentReply> ContentClient::Request(v1::ContentRequest request) {
  const uint64_t id = next_request_id_++;
  request.set_protocol_version(kProtocolVersion);
  request.set_request_id(id);
  request.set_repo(repo_);
  if (!SendRequest(socket_, request)) {
    return Status::Unavailable("content server " + content_.ToString() + " not accepting requests");
  }
  const auto deadline = std::chrono::steady_clock::now() + options_.stall_timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Status::Timeout("no reply from content server " + content_.ToString());
    }
    MC_ASSIGN_OR_RETURN(auto reply, AwaitReply(socket_, left));
    if (!reply) continue;
    if (reply->request_id() != id) continue;  // late reply to an abandoned request
    if (!reply->ok()) return Status::Rejected(reply->error());
    return std::move(*reply);
  }
}

Status ContentClient::FetchFiles(const std::vector<FileFetch>& files, FetchStats* stats,
                                 const std::function<bool()>& should_stop) {
  struct FileState {
    UniqueFd fd;
    uint64_t next_offset = 0;  // next byte to request
    uint64_t received = 0;
    bool done = false;
    // Hashed as the bytes arrive, so a file is never read back: chunks that
    // arrive early wait in `early` (bounded by the credit) for their turn.
    std::unique_ptr<Sha256> hash = std::make_unique<Sha256>();
    uint64_t hashed = 0;
    std::map<uint64_t, std::string> early;
  };
  struct Pending {
    size_t file;
    uint64_t offset;
    uint32_t length;
  };
  for (const FileFetch& file : files) {
    if (file.sha256.size() != kSha256Size) {
      return Status::InvalidArgument("fetch " + file.path +
                                     ": no SHA-256 to ask the broker for (files are served by "
                                     "content)");
    }
  }
  std::vector<FileState> state(files.size());
  std::map<uint64_t, Pending> pending;
  size_t next_file = 0;  // files before this have been opened
  size_t remaining = files.size();

  auto finish_file = [&](size_t i) -> Status {
    FileState& st = state[i];
    if (options_.fsync_each_file) {
      MC_RETURN_IF_ERROR(FsyncFd(st.fd.get(), files[i].dest.string()));
    }
    st.fd.reset();
    st.done = true;
    --remaining;
    if (stats) ++stats->files_fetched;
    assert(st.hashed == files[i].size);
    const std::string got = st.hash->Finish();
    if (got != files[i].sha256) {
      return Status::Corruption("fetched " + files[i].path + " does not match its signed SHA-256");
    }
    return Status::Ok();
  };

  // Opens a partly fetched file and hashes what it already holds.
  auto ResumeDest = [&](const FileFetch& file, FileState& st) -> Status {
    st.fd.reset(::open(file.dest.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!st.fd.valid()) return Status::FromErrno("open " + file.dest.string(), errno);
    struct stat info {};
    if (::fstat(st.fd.get(), &info) != 0)
      return Status::FromErrno("stat " + file.dest.string(), errno);
    uint64_t have = static_cast<uint64_t>(info.st_size);
    if (have > file.size) {
      if (::ftruncate(st.fd.get(), 0) != 0) {
        return Status::FromErrno("truncate " + file.dest.string(), errno);
      }
      have = 0;
    }
    std::vector<char> buf(1 << 20);
    while (st.hashed < have) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), have - st.hashed));
      ssize_t n = ::pread(st.fd.get(), buf.data(), want, static_cast<off_t>(st.hashed));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::FromErrno("read " + file.dest.string(), n < 0 ? errno : EIO);
      st.hash->Update(buf.data(), static_cast<size_t>(n));
      st.hashed += static_cast<uint64_t>(n);
    }
    st.next_offset = st.received = have;
    return Status::Ok();
  };

  // Issues requests while credit lasts. Files are opened lazily so a huge
  // update never holds more descriptors than requests in flight.
  auto fill = [&]() -> Status {
    while (static_cast<int>(pending.size()) < options_.credit) {
      // Find a file with bytes left to request.
      size_t i = files.size();
      for (auto& [id, p] : pending) {
        (void)id;
        const FileState& st = state[p.file];
        if (!st.done && st.next_offset < files[p.file].size) {
          i = p.file;
          break;
        }
      }
      if (i == files.size()) {
        while (next_file < files.size()) {
          size_t candidate = next_file++;
          if (files[candidate].resume) {
            MC_RETURN_IF_ERROR(ResumeDest(files[candidate], state[candidate]));
          } else {
            MC_ASSIGN_OR_RETURN(state[candidate].fd, CreateDest(files[candidate].dest));
          }
          if (state[candidate].received == files[candidate].size) {
            MC_RETURN_IF_ERROR(finish_file(candidate));
            continue;
          }
          i = candidate;
          break;
        }
      }
      if (i == files.size()) return Status::Ok();  // nothing left to request
      FileState& st = state[i];
      const uint64_t left = files[i].size - st.next_offset;
      const uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(left, options_.chunk_bytes));
      v1::ContentRequest request;
      const uint64_t id = next_request_id_++;
      request.set_protocol_version(kProtocolVersion);
      request.set_request_id(id);
      request.set_repo(repo_);
      auto* range = request.mutable_range();
      range->set_path(files[i].path);
      range->set_sha256(files[i].sha256);
      range->set_offset(st.next_offset);
      range->set_length(length);
      if (!SendRequest(socket_, request)) break;  // wait for replies to free the queue
      pending.emplace(id, Pending{i, st.next_offset, length});
      st.next_offset += length;
    }
    return Status::Ok();
  };

  MC_RETURN_IF_ERROR(fill());
  while (remaining > 0) {
    if (should_stop && should_stop()) return Status::Unavailable("stopping");
    if (pending.empty()) {
      MC_RETURN_IF_ERROR(fill());
      if (pending.empty() && remaining > 0) {
        return Status::Unavailable("content server " + content_.ToString() +
                                   " not accepting requests");
      }
    }
    MC_ASSIGN_OR_RETURN(auto reply, AwaitReply(socket_, options_.stall_timeout));
    if (!reply) {
      return Status::Timeout("content transfer from " + content_.ToString() + " stalled for " +
                             std::to_string(options_.stall_timeout.count()) + " ms");
    }
    auto it = pending.find(reply->request_id());
    if (it == pending.end()) continue;
    const Pending p = it->second;
    pending.erase(it);
    const FileFetch& file = files[p.file];
    if (!reply->ok()) return Status::Rejected("fetch " + file.path + ": " + reply->error());
    if (reply->total_size() != file.size) {
      return Status::Corruption("fetch " + file.path + ": broker has " +
                                std::to_string(reply->total_size()) + " bytes, signed size is " +
                                std::to_string(file.size));
    }
    if (reply->offset() != p.offset || reply->data().size() != p.length) {
      return Status::Corruption("fetch " + file.path + ": reply does not match the range asked");
    }
    FileState& st = state[p.file];
    MC_RETURN_IF_ERROR(WriteAllAt(st.fd.get(), reply->data(), p.offset, file.dest.string()));
    if (p.offset == st.hashed) {
      st.hash->Update(reply->data());
      st.hashed += p.length;
      for (auto e = st.early.begin(); e != st.early.end() && e->first == st.hashed;
           e = st.early.erase(e)) {
        st.hash->Update(e->second);
        st.hashed += e->second.size();
      }
    } else {
      st.early.emplace(p.offset, std::move(*reply->mutable_data()));
    }
    st.received += p.length;
    if (stats) stats->bytes_fetched += p.length;
    if (st.received == file.size) MC_RETURN_IF_ERROR(finish_file(p.file));
    MC_RETURN_IF_ERROR(fill());
  }
  return Status::Ok();
}

namespace {

// Streams an object whose size the first reply tells, `credit` chunks in flight.
template <typename MakeRequest, typename Sink>
Status FetchObject(zmq::socket_t& socket, uint64_t& next_id, const std::string& repo,
                   const ContentClientOptions& options, uint64_t max_total, MakeRequest make,
                   Sink sink, FetchStats* stats, const std::string& what) {
  std::map<uint64_t, std::pair<uint64_t, uint32_t>> pending;
  uint64_t total = UINT64_MAX;  // unknown until the first reply
  uint64_t next_offset = 0;
  uint64_t received = 0;
  auto send = [&](uint64_t offset, uint32_t length) -> bool {
    v1::ContentRequest request = make(offset, length);
    const uint64_t id = next_id++;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(id);
    request.set_repo(repo);
    if (!SendRequest(socket, request)) return false;
    pending.emplace(id, std::make_pair(offset, length));
    return true;
  };
  if (!send(0, options.chunk_bytes)) return Status::Unavailable(what + ": server not reachable");
  next_offset = options.chunk_bytes;
  while (!pending.empty()) {
    MC_ASSIGN_OR_RETURN(auto reply, AwaitReply(socket, options.stall_timeout));
    if (!reply) return Status::Timeout(what + ": transfer stalled");
    auto it = pending.find(reply->request_id());
    if (it == pending.end()) continue;
    auto [offset, length] = it->second;
    pending.erase(it);
    if (!reply->ok()) return Status::Rejected(what + ": " + reply->error());
    if (total == UINT64_MAX) {
      total = reply->total_size();
      if (total > max_total) {
        return Status::ResourceExhausted(what + ": " + std::to_string(total) +
                                         " bytes exceeds the limit of " +
                                         std::to_string(max_total));
      }
    } else if (reply->total_size() != total) {
      return Status::Corruption(what + ": size changed during the transfer");
    }
    const uint64_t expect = offset >= total ? 0 : std::min<uint64_t>(length, total - offset);
    if (reply->offset() != offset || reply->data().size() != expect) {
      return Status::Corruption(what + ": reply does not match the range asked");
    }
    MC_RETURN_IF_ERROR(sink(offset, reply->data()));
    received += expect;
    if (stats) stats->bytes_fetched += expect;
    while (static_cast<int>(pending.size()) < options.credit && next_offset < total) {
      const uint32_t len =
          static_cast<uint32_t>(std::min<uint64_t>(options.chunk_bytes, total - next_offset));
      if (!send(next_offset, len)) break;
      next_offset += len;
    }
  }
  if (received != total) return Status::Corruption(what + ": transfer ended short");
  return Status::Ok();
}

}  // namespace

Result<std::string> ContentClient::FetchManifestObject(const std::string& sha256, size_t max_bytes,
                                                       FetchStats* stats) {
  if (sha256.size() != kSha256Size) {
    return Status::InvalidArgument("a manifest object is named by a 32-byte SHA-256");
  }
  std::string out;
  auto make = [&](uint64_t offset, uint32_t length) {
    v1::ContentRequest request;
    auto* object = request.mutable_object();
    object->set_sha256(sha256);
    object->set_offset(offset);
    object->set_length(length);
    return request;
  };
  auto sink = [&](uint64_t offset, std::string_view data) -> Status {
    if (out.size() < offset + data.size()) out.resize(offset + data.size());
    out.replace(offset, data.size(), data);
    return Status::Ok();
  };
  const std::string what = "manifest object " + ToHex(sha256).substr(0, 16);
  MC_RETURN_IF_ERROR(
      FetchObject(socket_, next_request_id_, repo_, options_, max_bytes, make, sink, stats, what));
  if (Sha256Of(out) != sha256) {
    return Status::Corruption(what + " does not match its SHA-256");
  }
  return out;
}

Status ContentClient::FetchDelta(const std::string& path, const std::string& expected_sha256,
                                 const std::string& signature,
                                 const std::filesystem::path& delta_dest, uint64_t max_delta_bytes,
                                 FetchStats* stats) {
  if (expected_sha256.size() != kSha256Size) {
    return Status::InvalidArgument("delta of " + path + ": no SHA-256 of the wanted version");
  }
  v1::ContentRequest start;
  auto* delta = start.mutable_delta();
  delta->set_path(path);
  delta->set_expected_sha256(expected_sha256);
  delta->set_signature(signature);
  if (stats) stats->bytes_signature += signature.size();
  MC_ASSIGN_OR_RETURN(v1::ContentReply started, Request(std::move(start)));
  const uint64_t transfer = started.transfer_id();
  // Whatever happens next, tell the server it can drop the delta (no answer
  // is needed), so a refused or failed transfer does not wait for its TTL.
  struct Release {
    ContentClient* self;
    uint64_t transfer;
    ~Release() {
      v1::ContentRequest release;
      release.set_protocol_version(kProtocolVersion);
      release.set_request_id(self->next_request_id_++);
      release.set_repo(self->repo_);
      release.mutable_delta_range()->set_transfer_id(transfer);
      release.mutable_delta_range()->set_release(true);
      SendRequest(self->socket_, release);
    }
  } release{this, transfer};
  if (started.total_size() > max_delta_bytes) {
    return Status::ResourceExhausted("delta for " + path + " larger than the file itself");
  }
  MC_ASSIGN_OR_RETURN(UniqueFd fd, CreateDest(delta_dest));
  auto make = [&](uint64_t offset, uint32_t length) {
    v1::ContentRequest request;
    auto* range = request.mutable_delta_range();
    range->set_transfer_id(transfer);
    range->set_offset(offset);
    range->set_length(length);
    return request;
  };
  auto sink = [&](uint64_t offset, std::string_view data) {
    return WriteAllAt(fd.get(), data, offset, delta_dest.string());
  };
  return FetchObject(socket_, next_request_id_, repo_, options_, max_delta_bytes, make, sink, stats,
                     "delta of " + path);
}

}  // namespace mirrorcast
