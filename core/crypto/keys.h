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

// How a key file is read: a public key (anyone may read it; only root or
// its owner, who must be us or root, may write it and the directories on the
// way to it) or a secret key (also: nobody else may read it, and a symlink is
// not followed).
enum class KeyFileKind { kPublic, kSecret };

// Reads a small protected file (a key file, an allow-list) of at most
// `max_bytes`, refusing one that someone else could replace (owner, mode,
// every directory up to the root, also of the symlink's target) with a
// message saying how to fix it (FailedPrecondition), and for kSecret one
// readable by group or others. Checked on the open descriptor, so the bytes
// read are those of the file checked. `what` names the file in errors
// ("secret key", "allow-list"). Every key and trust file goes through this.
Result<std::string> ReadProtectedFile(const std::filesystem::path& path, KeyFileKind kind,
                                      size_t max_bytes, std::string_view what);

// Overwrites secret material before its memory is released.
void WipeSecret(std::string& s);

// The payload of a one-line key file "<prefix> <payload_chars characters>"
// (a trailing newline, CR or blanks from editors are tolerated); otherwise
// InvalidArgument naming `path` and `expected` (how the line should look).
Result<std::string> ParseKeyFileLine(std::string_view text, std::string_view prefix,
                                     size_t payload_chars, const std::filesystem::path& path,
                                     std::string_view expected);

// Writes a key pair's two files: `secret_path` (0600) then `public_path`
// (0644), each created exclusively (never replaces a file or follows a
// symlink planted there) and fsynced, then their directory. Refuses before
// writing anything when the public file exists, and removes the secret file
// again when the public one cannot be written: never half a pair.
Status SaveKeyPairFiles(const std::filesystem::path& secret_path, std::string_view secret_text,
                        const std::filesystem::path& public_path, std::string_view public_text);

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
