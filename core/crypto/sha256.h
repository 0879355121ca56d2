// SHA-256 (OpenSSL) over memory and files, and hex helpers.
// Digests are std::string of 32 raw bytes, as in the protobuf `bytes` fields.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

inline constexpr size_t kSha256Size = 32;

// Incremental hasher. Not thread-safe; one per thread.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(std::string_view data) { Update(data.data(), data.size()); }
  // Returns the 32-byte digest; the hasher is then reset for reuse.
  std::string Finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Of(std::string_view data);

// Hashes a whole regular file in bounded memory (it never loads the file).
// `bytes_read` (optional) receives the number of bytes read.
Result<std::string> Sha256File(const std::filesystem::path& path, uint64_t* bytes_read = nullptr);

// Lower-case hex of arbitrary bytes, and back.
std::string ToHex(std::string_view bytes);
Result<std::string> FromHex(std::string_view hex);

}  // namespace mirrorcast
