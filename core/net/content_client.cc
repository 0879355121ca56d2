#include "core/net/content_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
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

constexpr size_t kMaxReplyBytes = kMaxContentReplyBytes;

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

// The slow-retrieval floor of one transfer: at least `min_rate_bytes` per
// second over every window of `min_rate_window`, counted from the start of
// the transfer (and of each window after it).
class RateFloor {
 public:
  RateFloor(const ContentClientOptions& options, std::string what)
      : options_(options),
        clock_(options.clock ? *options.clock : Clock::Real()),
        what_(std::move(what)),
        window_start_(clock_.Steady()) {}

  // `received`: bytes of the transfer so far. Timeout once a window closed
  // below the floor.
  Status Check(uint64_t received) {
    if (options_.min_rate_bytes == 0 || options_.min_rate_window.count() <= 0) {
      return Status::Ok();
    }
    const auto now = clock_.Steady();
    if (now - window_start_ < options_.min_rate_window) return Status::Ok();
    const uint64_t got = received - at_window_start_;
    const auto window_s = static_cast<uint64_t>(options_.min_rate_window.count());
    if (got < options_.min_rate_bytes * window_s) {
      return Status::Timeout(what_ + ": " + std::to_string(got) + " bytes in the last " +
                             std::to_string(window_s) + " s, under the minimum rate of " +
                             std::to_string(options_.min_rate_bytes) +
                             " bytes/s (slow retrieval); aborted");
    }
    window_start_ = now;
    at_window_start_ = received;
    return Status::Ok();
  }

  // How long to wait for a reply before the window must be judged.
  Millis Wait(Millis stall) const {
    if (options_.min_rate_bytes == 0 || options_.min_rate_window.count() <= 0) return stall;
    const auto left = std::chrono::duration_cast<Millis>(window_start_ + options_.min_rate_window -
                                                         clock_.Steady());
    return std::max(Millis(1), std::min(stall, left));
  }

 private:
  const ContentClientOptions& options_;
  const Clock& clock_;
  std::string what_;
  std::chrono::steady_clock::time_point window_start_;
  uint64_t at_window_start_ = 0;
};

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
  SecureClientSocket(socket_, options_.transport);
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
  const Clock& clock = options_.clock ? *options_.clock : Clock::Real();
  const auto deadline = clock.Steady() + options_.stall_timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - clock.Steady());
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

Status CheckRangesRequest(const v1::RangesRequest& request) {
  if (request.ranges_size() == 0) return Status::Rejected("batched request without ranges");
  if (static_cast<size_t>(request.ranges_size()) > kMaxBatchRanges) {
    return Status::Rejected("batched request of " + std::to_string(request.ranges_size()) +
                            " ranges; at most " + std::to_string(kMaxBatchRanges));
  }
  uint64_t total = 0;
  for (const v1::RangeRequest& range : request.ranges()) total += range.length();
  if (total > kMaxChunk) {
    return Status::Rejected("batched request of " + std::to_string(total) + " bytes; at most " +
                            std::to_string(kMaxChunk));
  }
  return Status::Ok();
}

Status CheckWholeFilePart(const v1::RangeReply& part, const FileFetch& file) {
  if (!part.ok()) return Status::Rejected("fetch " + file.path + ": " + part.error());
  if (part.total_size() != file.size) {
    return Status::Corruption("fetch " + file.path + ": broker has " +
                              std::to_string(part.total_size()) + " bytes, signed size is " +
                              std::to_string(file.size));
  }
  if (part.offset() != 0 || part.data().size() != file.size) {
    return Status::Corruption("fetch " + file.path + ": reply does not match the range asked");
  }
  if (Sha256Of(part.data()) != file.sha256) {
    return Status::Corruption("fetched " + file.path + " does not match its signed SHA-256");
  }
  return Status::Ok();
}

namespace {

// A peer's text, fit for one log line.
std::string Printable(std::string_view text) {
  std::string out(text.substr(0, 200));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return out;
}

Status SetModeAndTimeFd(int fd, const FileFetch& file) {
  if (!file.set_mode_and_mtime) return Status::Ok();
  if (::fchmod(fd, static_cast<mode_t>(file.mode & 07777)) != 0) {
    return Status::FromErrno("chmod " + file.dest.string(), errno);
  }
  struct timespec times[2];
  times[0].tv_sec = static_cast<time_t>(file.mtime);
  times[0].tv_nsec = 0;
  times[1] = times[0];
  if (::futimens(fd, times) != 0)
    return Status::FromErrno("set mtime " + file.dest.string(), errno);
  return Status::Ok();
}

// A small file that arrived whole and verified: written in one go.
Status WriteWholeFile(const FileFetch& file, std::string_view data, bool fsync) {
  MC_ASSIGN_OR_RETURN(UniqueFd fd, CreateDest(file.dest));
  MC_RETURN_IF_ERROR(WriteAllAt(fd.get(), data, 0, file.dest.string()));
  MC_RETURN_IF_ERROR(SetModeAndTimeFd(fd.get(), file));
  if (fsync) MC_RETURN_IF_ERROR(FsyncFd(fd.get(), file.dest.string()));
  return Status::Ok();
}

}  // namespace

Status ContentClient::FetchFiles(const std::vector<FileFetch>& files, FetchStats* stats,
                                 const std::function<bool()>& should_stop) {
  struct FileState {
    UniqueFd fd;
    uint64_t next_offset = 0;  // next byte to request
    uint64_t received = 0;
    bool done = false;
    // Hashed as the bytes arrive, so a file is never read back: chunks that
    // arrive early wait in `early` (bounded by the credit) for their turn.
    std::unique_ptr<Sha256> hash;
    uint64_t hashed = 0;
    std::map<uint64_t, std::string> early;
  };
  // One request in flight: a range of one file, or (`batch` not empty)
  // several small files whole.
  struct Pending {
    size_t file = 0;
    uint64_t offset = 0;
    uint32_t length = 0;
    std::vector<size_t> batch;
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
  size_t next_file = 0;          // files before this have been started
  std::deque<size_t> unbatched;  // small files sent again one range at a time
  size_t remaining = files.size();

  uint64_t received_total = 0;  // bytes of this call, for the rate floor
  auto batchable = [&](size_t i) {
    return batching_ && !files[i].resume && files[i].size > 0 &&
           files[i].size <= options_.batch_file_bytes;
  };

  auto finish_file = [&](size_t i) -> Status {
    FileState& st = state[i];
    MC_RETURN_IF_ERROR(SetModeAndTimeFd(st.fd.get(), files[i]));
    if (options_.fsync_each_file) {
      MC_RETURN_IF_ERROR(FsyncFd(st.fd.get(), files[i].dest.string()));
    }
    st.fd.reset();
    st.done = true;
    --remaining;
    if (stats) ++stats->files_fetched;
    if (st.hashed != files[i].size || st.hash->Finish() != files[i].sha256) {
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

  auto new_request = [&]() {
    v1::ContentRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(next_request_id_++);
    request.set_repo(repo_);
    return request;
  };

  // The next file to fetch range by range, opened (files are opened lazily,
  // so a huge update never holds more descriptors than requests in flight);
  // files.size() when none is left. Sends a batch of small files first when
  // they come next; `sent_batch` says so.
  auto start_next = [&](bool* sent_batch) -> Result<size_t> {
    *sent_batch = false;
    for (;;) {
      size_t candidate;
      if (!unbatched.empty()) {
        candidate = unbatched.front();
        unbatched.pop_front();
      } else if (next_file < files.size() && batchable(next_file)) {
        v1::ContentRequest request = new_request();
        Pending batch;
        uint64_t bytes = 0;
        while (next_file < files.size() && batchable(next_file) &&
               batch.batch.size() < kMaxBatchRanges && bytes + files[next_file].size <= kMaxChunk) {
          const FileFetch& file = files[next_file];
          auto* range = request.mutable_ranges()->add_ranges();
          range->set_path(file.path);
          range->set_sha256(file.sha256);
          range->set_offset(0);
          range->set_length(static_cast<uint32_t>(file.size));
          bytes += file.size;
          batch.batch.push_back(next_file++);
        }
        if (!SendRequest(socket_, request)) {
          next_file -= batch.batch.size();  // asked again once replies free the queue
          return files.size();
        }
        pending.emplace(request.request_id(), std::move(batch));
        *sent_batch = true;
        return files.size();
      } else if (next_file < files.size()) {
        candidate = next_file++;
      } else {
        return files.size();
      }
      FileState& st = state[candidate];
      st.hash = std::make_unique<Sha256>();
      if (files[candidate].resume) {
        MC_RETURN_IF_ERROR(ResumeDest(files[candidate], st));
      } else {
        MC_ASSIGN_OR_RETURN(st.fd, CreateDest(files[candidate].dest));
      }
      if (st.received == files[candidate].size) {
        MC_RETURN_IF_ERROR(finish_file(candidate));
        continue;
      }
      return candidate;
    }
  };

  // Issues requests while credit lasts.
  size_t streaming = files.size();  // the file being requested range by range
  auto fill = [&]() -> Status {
    while (static_cast<int>(pending.size()) < options_.credit) {
      // The file already started with bytes left to request comes first
      // (files are started one at a time, so there is at most one). Kept
      // here, not found among the requests in flight: with a credit of 1 none
      // is in flight between two chunks of the same file.
      size_t i = files.size();
      if (streaming < files.size() && !state[streaming].done &&
          state[streaming].next_offset < files[streaming].size) {
        i = streaming;
      }
      if (i == files.size()) {
        bool sent_batch = false;
        MC_ASSIGN_OR_RETURN(i, start_next(&sent_batch));
        if (sent_batch) continue;
        streaming = i;
      }
      if (i == files.size()) return Status::Ok();  // nothing left to request
      FileState& st = state[i];
      const uint64_t left = files[i].size - st.next_offset;
      const uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(left, options_.chunk_bytes));
      v1::ContentRequest request = new_request();
      auto* range = request.mutable_range();
      range->set_path(files[i].path);
      range->set_sha256(files[i].sha256);
      range->set_offset(st.next_offset);
      range->set_length(length);
      if (!SendRequest(socket_, request)) break;  // wait for replies to free the queue
      Pending p;
      p.file = i;
      p.offset = st.next_offset;
      p.length = length;
      pending.emplace(request.request_id(), std::move(p));
      st.next_offset += length;
    }
    return Status::Ok();
  };

  // The answer to a batch of small files: each is checked whole, then written.
  auto take_batch = [&](const Pending& p, v1::ContentReply& reply) -> Status {
    if (!reply.ok()) {
      // A broker that predates RangesRequest: one request per file from now on.
      if (batching_) {
        MC_LOG(info) << "content server " << content_.ToString() << " refused a batched request ("
                     << Printable(reply.error()) << "); fetching one range per request";
        batching_ = false;
      }
      for (size_t f : p.batch) unbatched.push_back(f);
      return Status::Ok();
    }
    if (static_cast<size_t>(reply.parts_size()) != p.batch.size()) {
      return Status::Corruption("batched reply from " + content_.ToString() + " has " +
                                std::to_string(reply.parts_size()) + " parts for " +
                                std::to_string(p.batch.size()) + " files");
    }
    for (size_t k = 0; k < p.batch.size(); ++k) {
      const FileFetch& file = files[p.batch[k]];
      MC_RETURN_IF_ERROR(CheckWholeFilePart(reply.parts(static_cast<int>(k)), file));
      MC_RETURN_IF_ERROR(
          WriteWholeFile(file, reply.parts(static_cast<int>(k)).data(), options_.fsync_each_file));
      state[p.batch[k]].done = true;
      --remaining;
      received_total += file.size;
      if (stats) {
        ++stats->files_fetched;
        stats->bytes_fetched += file.size;
      }
    }
    return Status::Ok();
  };

  const Clock& clock = options_.clock ? *options_.clock : Clock::Real();
  RateFloor floor(options_, "content transfer from " + content_.ToString());
  auto last_reply = clock.Steady();
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
    MC_ASSIGN_OR_RETURN(auto reply, AwaitReply(socket_, floor.Wait(options_.stall_timeout)));
    MC_RETURN_IF_ERROR(floor.Check(received_total));
    if (!reply) {
      if (clock.Steady() - last_reply < options_.stall_timeout) continue;
      return Status::Timeout("content transfer from " + content_.ToString() + " stalled for " +
                             std::to_string(options_.stall_timeout.count()) + " ms");
    }
    last_reply = clock.Steady();
    auto it = pending.find(reply->request_id());
    if (it == pending.end()) continue;
    const Pending p = std::move(it->second);
    pending.erase(it);
    if (!p.batch.empty()) {
      MC_RETURN_IF_ERROR(take_batch(p, *reply));
      MC_RETURN_IF_ERROR(fill());
      continue;
    }
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
    received_total += p.length;
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
  const Clock& clock = options.clock ? *options.clock : Clock::Real();
  RateFloor floor(options, what);
  auto last_reply = clock.Steady();
  while (!pending.empty()) {
    MC_ASSIGN_OR_RETURN(auto reply, AwaitReply(socket, floor.Wait(options.stall_timeout)));
    MC_RETURN_IF_ERROR(floor.Check(received));
    if (!reply) {
      if (clock.Steady() - last_reply < options.stall_timeout) continue;
      return Status::Timeout(what + ": transfer stalled");
    }
    last_reply = clock.Steady();
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
  // The token names the transfer (a broker before tokens: the id).
  const uint64_t transfer = started.transfer_id();
  const std::string token = started.transfer_token();
  // Whatever happens next, tell the server it can drop the delta (no answer
  // is needed), so a refused or failed transfer does not wait for its TTL.
  struct Release {
    ContentClient* self;
    uint64_t transfer;
    const std::string& token;
    ~Release() {
      v1::ContentRequest release;
      release.set_protocol_version(kProtocolVersion);
      release.set_request_id(self->next_request_id_++);
      release.set_repo(self->repo_);
      release.mutable_delta_range()->set_transfer_id(transfer);
      release.mutable_delta_range()->set_transfer_token(token);
      release.mutable_delta_range()->set_release(true);
      SendRequest(self->socket_, release);
    }
  } release{this, transfer, token};
  if (started.total_size() > max_delta_bytes) {
    return Status::ResourceExhausted("delta for " + path + " larger than the file itself");
  }
  MC_ASSIGN_OR_RETURN(UniqueFd fd, CreateDest(delta_dest));
  auto make = [&](uint64_t offset, uint32_t length) {
    v1::ContentRequest request;
    auto* range = request.mutable_delta_range();
    range->set_transfer_id(transfer);
    range->set_transfer_token(token);
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
