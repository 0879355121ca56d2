// Ed25519 keys (OpenSSL 3, one-shot EVP_DigestSign/Verify with a NULL digest).
//
// Key files are one line of text so operators can read and copy them:
//   PREFIX.key  "mirrorcast-ed25519-secret-v1 <64 hex chars>\n"   mode 0600
//   PREFIX.pub  "mirrorcast-ed25519-public-v1 <64 hex chars>\n"
// A key id is the hex of the first 16 bytes of SHA-256(raw public key).
// All classes are immutable after construction and safe to share across threads.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"

namespace mirrorcast {

inline constexpr size_t kEd25519PublicKeySize = 32;
inline constexpr size_t kEd25519SignatureSize = 64;

class PublicKey {
 public:
  static Result<PublicKey> FromRaw(std::string_view raw32);
  static Result<PublicKey> LoadFile(const std::filesystem::path& path);

  const std::string& raw() const { return raw_; }
  const std::string& key_id() const { return key_id_; }
  // True only for a valid 64-byte Ed25519 signature of `message` by this key.
  bool Verify(std::string_view message, std::string_view signature) const;
  // The one-line .pub file text.
  std::string ToFileText() const;

 private:
  std::string raw_;
  std::string key_id_;
};

class SigningKey {
 public:
  static Result<SigningKey> Generate();
  // Refuses a secret key file readable by group or others.
  static Result<SigningKey> LoadFile(const std::filesystem::path& path);

  // Writes PREFIX.key (0600, created exclusively: never overwrites) and PREFIX.pub.
  Status SaveFiles(const std::string& prefix) const;
  // 64-byte Ed25519 signature.
  std::string Sign(std::string_view message) const;
  const PublicKey& public_key() const { return public_key_; }

 private:
  std::string seed_;  // 32-byte raw private key
  PublicKey public_key_;
};

// The keys a verifier accepts, by key id.
class TrustStore {
 public:
  Status AddFile(const std::filesystem::path& pub_file);
  void Add(const PublicKey& key);
  // nullptr when the key id is not trusted.
  const PublicKey* Find(std::string_view key_id) const;
  bool empty() const { return keys_.empty(); }
  size_t size() const { return keys_.size(); }

 private:
  std::map<std::string, PublicKey, std::less<>> keys_;
};

}  // namespace mirrorcast
