#include "core/delta/delta.h"

#include <fcntl.h>
#include <librsync.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "core/base/log.h"
#include "core/crypto/sha256.h"

namespace mirrorcast {
namespace {

// Signature header: magic, block_len, strong_len, each a big-endian uint32,
// then one (4-byte weak sum, strong_len-byte strong sum) record per block.
constexpr size_t kSigHeaderBytes = 12;
constexpr size_t kWeakSumBytes = 4;
constexpr uint32_t kMaxStrongLen = 32;                 // BLAKE2 sum length in librsync
constexpr size_t kStrongLen = kMinSignatureStrongLen;  // what ComputeSignature uses (at least)
// ComputeDelta's own bound on a signature it loads into memory.
constexpr size_t kMaxSignatureBytes = 64u << 20;
constexpr size_t kIoBufferBytes = 256u << 10;

void LibrsyncTrace(rs_loglevel level, const char* msg) {
  // librsync errors surface as our Status with context; its own lines are
  // only useful when debugging.
  MC_LOG(debug) << "librsync[" << static_cast<int>(level) << "]: " << msg;
}

void InitLibrsync() {
  static std::once_flag once;
  std::call_once(once, [] { rs_trace_to(&LibrsyncTrace); });
}

uint32_t ReadBe32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | uint32_t{u[3]};
}

std::string RsError(std::string_view what, rs_result r) {
  return std::string(what) + ": " + rs_strerror(r);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

struct SumsetFree {
  void operator()(rs_signature_t* s) const { rs_free_sumset(s); }
};
using SumsetPtr = std::unique_ptr<rs_signature_t, SumsetFree>;

struct JobFree {
  void operator()(rs_job_t* j) const { rs_job_free(j); }
};
using JobPtr = std::unique_ptr<rs_job_t, JobFree>;

// Opens a regular file for reading without following a final symlink.
Result<FilePtr> OpenForRead(const std::filesystem::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return Status::FromErrno("open " + path.string(), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("stat " + path.string(), errno);
  if (!S_ISREG(st.st_mode))
    return Status::InvalidArgument(path.string() + " is not a regular file");
  FILE* f = ::fdopen(fd.get(), "rb");
  if (f == nullptr) return Status::FromErrno("fdopen " + path.string(), errno);
  fd.release();
  return FilePtr(f);
}

// Loads a checked signature into a hash-indexed sumset ready for rs_delta.
Result<SumsetPtr> LoadSignature(std::string_view signature) {
  rs_signature_t* raw = nullptr;
  JobPtr job(rs_loadsig_begin(&raw));
  if (!job) return Status::ResourceExhausted("librsync could not start loading a signature");
  rs_buffers_t buffers{};
  buffers.next_in = const_cast<char*>(signature.data());
  buffers.avail_in = signature.size();
  buffers.eof_in = 1;
  rs_result r = rs_job_iter(job.get(), &buffers);
  // The sumset belongs to us from here on, whatever the job returned.
  SumsetPtr sums(raw);
  job.reset();
  if (r != RS_DONE) {
    if (r == RS_BLOCKED) r = RS_INPUT_ENDED;
    return Status::InvalidArgument(RsError("bad librsync signature", r));
  }
  if (!sums) return Status::InvalidArgument("bad librsync signature: nothing loaded");
  r = rs_build_hash_table(sums.get());
  if (r != RS_DONE) return Status::ResourceExhausted(RsError("indexing librsync signature", r));
  return sums;
}

struct CopySource {
  int fd;
  rs_result error = RS_DONE;
  int error_errno = 0;
};

// rs_copy_cb reading the basis with pread: no shared file offset, no stdio.
rs_result CopyFromBasis(void* opaque, rs_long_t pos, size_t* len, void** buf) {
  auto* src = static_cast<CopySource*>(opaque);
  if (pos < 0) {
    src->error = RS_CORRUPT;
    return RS_CORRUPT;
  }
  for (;;) {
    ssize_t n = ::pread(src->fd, *buf, *len, static_cast<off_t>(pos));
    if (n < 0) {
      if (errno == EINTR) continue;
      src->error = RS_IO_ERROR;
      src->error_errno = errno;
      return RS_IO_ERROR;
    }
    if (n == 0) {
      // The delta copies past the end of this basis: it was made for another.
      src->error = RS_INPUT_ENDED;
      return RS_INPUT_ENDED;
    }
    *len = static_cast<size_t>(n);
    return RS_DONE;
  }
}

Status WriteAll(int fd, const char* data, size_t size, const std::filesystem::path& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("write " + path.string(), errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Refills librsync's input: keeps what it has not consumed, moved to the
// front of `in`, then reads from `fd` behind it (eof_in set at the end).
Status RefillInput(int fd, const std::filesystem::path& name, std::vector<char>& in,
                   rs_buffers_t& buffers) {
  if (buffers.eof_in || buffers.avail_in >= in.size()) return Status::Ok();
  if (buffers.avail_in > 0 && buffers.next_in != in.data()) {
    std::memmove(in.data(), buffers.next_in, buffers.avail_in);
  }
  buffers.next_in = in.data();
  ssize_t n;
  do {
    n = ::read(fd, in.data() + buffers.avail_in, in.size() - buffers.avail_in);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Status::FromErrno("read " + name.string(), errno);
  if (n == 0) buffers.eof_in = 1;
  buffers.avail_in += static_cast<size_t>(n);
  return Status::Ok();
}

Status RunPatch(int basis_fd, int delta_fd, int out_fd, const std::filesystem::path& basis,
                const std::filesystem::path& delta, const std::filesystem::path& out,
                uint64_t max_output_bytes, Sha256* output_hash) {
  CopySource source{basis_fd};
  JobPtr job(rs_patch_begin(&CopyFromBasis, &source));
  if (!job) return Status::ResourceExhausted("librsync could not start a patch");
  std::vector<char> in(kIoBufferBytes);
  std::vector<char> outbuf(kIoBufferBytes);
  rs_buffers_t buffers{};
  buffers.next_in = in.data();
  buffers.avail_in = 0;
  buffers.eof_in = 0;
  uint64_t written = 0;
  for (;;) {
    MC_RETURN_IF_ERROR(RefillInput(delta_fd, delta, in, buffers));
    const size_t avail_in_before = buffers.avail_in;
    buffers.next_out = outbuf.data();
    buffers.avail_out = outbuf.size();
    const rs_result r = rs_job_iter(job.get(), &buffers);
    const size_t produced = outbuf.size() - buffers.avail_out;
    if (produced > max_output_bytes - written) {
      return Status::ResourceExhausted("patching " + out.string() + " from " + delta.string() +
                                       ": output exceeds the expected " +
                                       std::to_string(max_output_bytes) + " bytes");
    }
    MC_RETURN_IF_ERROR(WriteAll(out_fd, outbuf.data(), produced, out));
    if (output_hash) output_hash->Update(outbuf.data(), produced);
    written += produced;
    if (r == RS_DONE) return Status::Ok();
    if (r != RS_BLOCKED) {
      if (source.error == RS_IO_ERROR) {
        return Status::FromErrno("read basis " + basis.string(), source.error_errno);
      }
      if (source.error == RS_INPUT_ENDED) {
        return Status::Corruption("delta " + delta.string() + " copies beyond the end of basis " +
                                  basis.string() + " (wrong basis?)");
      }
      return Status::Corruption(RsError("applying delta " + delta.string(), r));
    }
    // Blocked with all input given and no progress: the delta is cut short.
    if (buffers.eof_in && produced == 0 && buffers.avail_in == avail_in_before) {
      return Status::Corruption("delta " + delta.string() + " is truncated");
    }
  }
}

}  // namespace

Result<std::string> ComputeSignature(const std::filesystem::path& basis) {
  InitLibrsync();
  MC_ASSIGN_OR_RETURN(FilePtr in, OpenForRead(basis));
  struct stat st {};
  if (::fstat(::fileno(in.get()), &st) != 0) {
    return Status::FromErrno("stat " + basis.string(), errno);
  }
  rs_magic_number magic = RS_RK_BLAKE2_SIG_MAGIC;
  size_t block_len = 0;
  size_t strong_len = static_cast<size_t>(-1);  // the minimum safe for this size...
  rs_result r = rs_sig_args(static_cast<rs_long_t>(st.st_size), &magic, &block_len, &strong_len);
  if (r != RS_DONE) return Status::Internal(RsError("rs_sig_args", r));
  // ...but never under 64 bits. A collision (even a crafted one) can only
  // corrupt the rebuilt file, which its signed SHA-256 catches before the
  // file is used, falling back to a whole-file fetch: so the strong sum is a
  // bandwidth trade-off, not a security boundary. Longer sums would make the
  // signature the larger part of the traffic for a small change.
  strong_len = std::max(strong_len, kStrongLen);
  char* mem = nullptr;
  size_t mem_size = 0;
  FILE* sig_raw = ::open_memstream(&mem, &mem_size);
  if (sig_raw == nullptr) return Status::FromErrno("open_memstream", errno);
  FilePtr sig(sig_raw);
  std::unique_ptr<char, decltype(&std::free)> mem_owner(nullptr, &std::free);
  ::posix_fadvise(::fileno(in.get()), 0, 0, POSIX_FADV_SEQUENTIAL);
  r = rs_sig_file(in.get(), sig.get(), block_len, strong_len, magic, nullptr);
  const bool read_error = std::ferror(in.get()) != 0;
  // Closing a memstream publishes the final buffer pointer and size.
  const int close_rc = std::fclose(sig.release());
  mem_owner.reset(mem);
  if (read_error) return Status::IoError("read " + basis.string() + " failed");
  if (r != RS_DONE) return Status::IoError(RsError("signature of " + basis.string(), r));
  if (close_rc != 0 || mem == nullptr) {
    return Status::ResourceExhausted("out of memory building the signature of " + basis.string());
  }
  return std::string(mem, mem_size);
}

Result<SignatureShape> CheckSignature(std::string_view signature, size_t max_bytes) {
  if (signature.size() > max_bytes) {
    return Status::ResourceExhausted("delta signature of " + std::to_string(signature.size()) +
                                     " bytes exceeds the limit of " + std::to_string(max_bytes));
  }
  if (signature.size() < kSigHeaderBytes) {
    return Status::InvalidArgument(
        "delta signature truncated: " + std::to_string(signature.size()) + " bytes");
  }
  const uint32_t magic = ReadBe32(signature.data());
  const uint32_t block_len = ReadBe32(signature.data() + 4);
  const uint32_t strong_len = ReadBe32(signature.data() + 8);
  if (magic != RS_RK_BLAKE2_SIG_MAGIC) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", magic);
    const char* what = (magic == RS_MD4_SIG_MAGIC || magic == RS_RK_MD4_SIG_MAGIC)
                           ? " (weak MD4 signature refused)"
                           : "";
    return Status::Rejected(std::string("delta signature magic ") + hex +
                            " is not RS_RK_BLAKE2_SIG_MAGIC" + what);
  }
  if (block_len < kMinSignatureBlockLen || block_len > kMaxSignatureBlockLen) {
    return Status::Rejected("delta signature block length " + std::to_string(block_len) +
                            " outside [" + std::to_string(kMinSignatureBlockLen) + ", " +
                            std::to_string(kMaxSignatureBlockLen) + "]");
  }
  if (strong_len < kMinSignatureStrongLen || strong_len > kMaxStrongLen) {
    return Status::Rejected("delta signature strong sum length " + std::to_string(strong_len) +
                            " outside [" + std::to_string(kMinSignatureStrongLen) + ", " +
                            std::to_string(kMaxStrongLen) + "]");
  }
  const size_t record = kWeakSumBytes + strong_len;
  if ((signature.size() - kSigHeaderBytes) % record != 0) {
    return Status::InvalidArgument(
        "delta signature truncated: " + std::to_string(signature.size()) +
        " bytes is not a whole number of blocks");
  }
  SignatureShape shape;
  shape.block_len = block_len;
  shape.strong_len = strong_len;
  shape.blocks = (signature.size() - kSigHeaderBytes) / record;
  return shape;
}

uint64_t MaxSignatureBytes(uint64_t file_size, uint32_t block_len, uint32_t strong_len) {
  if (block_len == 0) return kSignatureBytesAllowance;
  // Sizes are at most 2^63 and block_len at least 1: no overflow below.
  const uint64_t basis = std::max<uint64_t>(file_size, 1) * kMaxBasisToFileRatio;
  const uint64_t blocks = basis / block_len + (basis % block_len != 0 ? 1 : 0);
  return std::max(kSignatureBytesAllowance,
                  kSigHeaderBytes + blocks * (kWeakSumBytes + uint64_t{strong_len}));
}

Result<SignatureShape> CheckSignatureFor(std::string_view signature, uint64_t file_size) {
  MC_ASSIGN_OR_RETURN(SignatureShape shape, CheckSignature(signature, kMaxSignatureBytes));
  const uint64_t max = MaxSignatureBytes(file_size, shape.block_len, shape.strong_len);
  if (signature.size() > max) {
    return Status::Rejected(
        "delta signature of " + std::to_string(signature.size()) + " bytes (" +
        std::to_string(shape.blocks) + " blocks of " + std::to_string(shape.block_len) +
        ") is larger than the signature of a basis of " + std::to_string(kMaxBasisToFileRatio) +
        "x this file's " + std::to_string(file_size) + " bytes would be (" + std::to_string(max) +
        ")");
  }
  // Records sorted by (weak, strong): identical ones count once.
  const size_t record = kWeakSumBytes + shape.strong_len;
  std::vector<std::string_view> records;
  records.reserve(shape.blocks);
  for (uint64_t i = 0; i < shape.blocks; ++i) {
    records.push_back(signature.substr(kSigHeaderBytes + i * record, record));
  }
  std::sort(records.begin(), records.end());
  uint64_t run = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    if (i > 0 && records[i] == records[i - 1]) continue;
    const bool same_weak =
        i > 0 && records[i].substr(0, kWeakSumBytes) == records[i - 1].substr(0, kWeakSumBytes);
    run = same_weak ? run + 1 : 1;
    if (run > kMaxStrongSumsPerWeakSum) {
      return Status::Rejected("delta signature has more than " +
                              std::to_string(kMaxStrongSumsPerWeakSum) +
                              " different blocks with one weak sum (crafted to be slow)");
    }
  }
  return shape;
}

namespace {

// Drives an rs_delta job over `in_fd`, writing to `out_fd`, within `limits`.
Status RunDelta(rs_signature_t* sums, int in_fd, int out_fd, const std::filesystem::path& new_file,
                const std::filesystem::path& delta_out, const DeltaLimits& limits,
                DeltaStats* stats) {
  JobPtr job(rs_delta_begin(sums));
  if (!job) return Status::ResourceExhausted("librsync could not start a delta");
  // Small input blocks: a stop request or the output bound is seen soon.
  std::vector<char> in(64u << 10);
  std::vector<char> outbuf(kIoBufferBytes);
  rs_buffers_t buffers{};
  buffers.next_in = in.data();
  uint64_t written = 0;
  for (;;) {
    if (limits.should_stop && limits.should_stop()) {
      return Status::Unavailable("delta of " + new_file.string() + " stopped");
    }
    MC_RETURN_IF_ERROR(RefillInput(in_fd, new_file, in, buffers));
    buffers.next_out = outbuf.data();
    buffers.avail_out = outbuf.size();
    const rs_result r = rs_job_iter(job.get(), &buffers);
    const size_t produced = outbuf.size() - buffers.avail_out;
    if (produced > limits.max_delta_bytes - written) {
      return Status::ResourceExhausted("delta of " + new_file.string() + " exceeds " +
                                       std::to_string(limits.max_delta_bytes) + " bytes");
    }
    MC_RETURN_IF_ERROR(WriteAll(out_fd, outbuf.data(), produced, delta_out));
    written += produced;
    if (r == RS_DONE) break;
    if (r != RS_BLOCKED) return Status::IoError(RsError("delta of " + new_file.string(), r));
  }
  if (stats != nullptr) {
    const rs_stats_t* rs_stats = rs_job_statistics(job.get());
    stats->literal_bytes = static_cast<uint64_t>(rs_stats->lit_bytes);
    stats->copied_bytes = static_cast<uint64_t>(rs_stats->copy_bytes);
    stats->delta_bytes = written;
  }
  return Status::Ok();
}

}  // namespace

Status ComputeDelta(std::string_view signature, const std::filesystem::path& new_file,
                    const std::filesystem::path& delta_out, DeltaStats* stats,
                    const DeltaLimits& limits) {
  InitLibrsync();
  Fd in(::open(new_file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!in.valid()) return Status::FromErrno("open " + new_file.string(), errno);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return Status::FromErrno("stat " + new_file.string(), errno);
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(new_file.string() + " is not a regular file");
  }
  // Before librsync allocates anything for it.
  MC_RETURN_IF_ERROR(CheckSignatureFor(signature, static_cast<uint64_t>(st.st_size)).status());
  MC_ASSIGN_OR_RETURN(SumsetPtr sums, LoadSignature(signature));
  ::posix_fadvise(in.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  Fd out(::open(delta_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!out.valid()) return Status::FromErrno("create " + delta_out.string(), errno);
  Status done = RunDelta(sums.get(), in.get(), out.get(), new_file, delta_out, limits, stats);
  if (done.ok() && ::close(out.release()) != 0) {
    done = Status::FromErrno("close " + delta_out.string(), errno);
  }
  // We created it: leave no partial delta to be served by mistake.
  if (!done.ok()) ::unlink(delta_out.c_str());
  return done;
}

Status ApplyDelta(const std::filesystem::path& basis, const std::filesystem::path& delta,
                  const std::filesystem::path& out, uint64_t max_output_bytes,
                  std::string* output_sha256) {
  InitLibrsync();
  Fd basis_fd(::open(basis.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!basis_fd.valid()) return Status::FromErrno("open basis " + basis.string(), errno);
  struct stat st {};
  if (::fstat(basis_fd.get(), &st) != 0) return Status::FromErrno("stat " + basis.string(), errno);
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument("basis " + basis.string() + " is not a regular file");
  }
  Fd delta_fd(::open(delta.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!delta_fd.valid()) return Status::FromErrno("open delta " + delta.string(), errno);
  ::posix_fadvise(delta_fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  Fd out_fd(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!out_fd.valid()) return Status::FromErrno("create " + out.string(), errno);

  Sha256 hash;
  Status st_patch = RunPatch(basis_fd.get(), delta_fd.get(), out_fd.get(), basis, delta, out,
                             max_output_bytes, output_sha256 ? &hash : nullptr);
  if (st_patch.ok() && output_sha256) *output_sha256 = hash.Finish();
  if (st_patch.ok() && ::close(out_fd.release()) != 0) {
    st_patch = Status::FromErrno("close " + out.string(), errno);
  }
  if (!st_patch.ok()) {
    // Leave no half-built file behind for someone to mistake for the real one.
    ::unlink(out.c_str());
  }
  return st_patch;
}

}  // namespace mirrorcast
