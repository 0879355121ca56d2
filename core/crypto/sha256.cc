#include "core/crypto/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "core/base/check.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

struct Sha256::Impl {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Impl() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  // Failure here means OpenSSL itself is broken: a bug, not input.
  int ok = EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr);
  MC_CHECK(ok == 1, "OpenSSL SHA-256 failed");
}

Sha256::~Sha256() = default;

void Sha256::Update(const void* data, size_t size) {
  if (size == 0) return;
  int ok = EVP_DigestUpdate(impl_->ctx, data, size);
  MC_CHECK(ok == 1, "OpenSSL SHA-256 failed");
}

std::string Sha256::Finish() {
  std::string out(kSha256Size, '\0');
  unsigned int len = 0;
  const int done =
      EVP_DigestFinal_ex(impl_->ctx, reinterpret_cast<unsigned char*>(out.data()), &len);
  MC_CHECK(done == 1 && len == kSha256Size, "OpenSSL SHA-256 final failed");
  const int again = EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr);
  MC_CHECK(again == 1, "OpenSSL SHA-256 init failed");
  return out;
}

std::string Sha256Of(std::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.Finish();
}

Result<std::string> Sha256File(const std::filesystem::path& path, uint64_t* bytes_read) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return Status::FromErrno("open " + path.string(), errno);
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("read " + path.string(), errno);
    }
    if (n == 0) break;
    h.Update(buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  if (bytes_read) *bytes_read = total;
  return h.Finish();
}

std::string ToHex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 0xf]);
  }
  return out;
}

Result<std::string> FromHex(std::string_view hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) return Status::InvalidArgument("hex string of odd length");
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]);
    int lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return Status::InvalidArgument("not a hex string");
    out.push_back(static_cast<char>((hi << 4) | lo));
  }
  return out;
}

}  // namespace mirrorcast
