#include "core/crypto/keys.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"

namespace mirrorcast {
namespace {

constexpr std::string_view kSecretPrefix = "mirrorcast-ed25519-secret-v1";
constexpr std::string_view kPublicPrefix = "mirrorcast-ed25519-public-v1";
constexpr size_t kEd25519SeedSize = 32;
// A key file is one short line; anything much longer is not a key file.
constexpr size_t kMaxKeyFileBytes = 1024;

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

const unsigned char* Bytes(std::string_view s) {
  // OpenSSL may not accept a null pointer even for zero bytes.
  static const unsigned char kEmpty = 0;
  return s.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(s.data());
}

// Parses "<prefix> <64 hex chars>" into 32 raw bytes.
Result<std::string> ParseKeyText(std::string_view text, std::string_view prefix,
                                 const std::filesystem::path& path) {
  const std::string expected = "expected one line '" + std::string(prefix) + " <64 hex chars>'";
  MC_ASSIGN_OR_RETURN(std::string hex,
                      ParseKeyFileLine(text, prefix, 2 * kEd25519SeedSize, path, expected));
  auto raw = FromHex(hex);
  WipeSecret(hex);
  if (!raw.ok()) {
    return Status::InvalidArgument(path.string() + ": malformed key (" + expected + ")");
  }
  return std::move(raw).value();
}

// Reads at most `max_bytes` from an open descriptor.
Result<std::string> ReadKeyFd(int fd, const std::filesystem::path& path, size_t max_bytes,
                              std::string_view what) {
  std::string out;
  char buf[512];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      OPENSSL_cleanse(buf, sizeof buf);
      WipeSecret(out);
      return Status::FromErrno("read " + path.string(), errno);
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      OPENSSL_cleanse(buf, sizeof buf);
      WipeSecret(out);
      return Status::InvalidArgument(path.string() + ": too large to be a " + std::string(what) +
                                     " (at most " + std::to_string(max_bytes) + " bytes)");
    }
    out.append(buf, static_cast<size_t>(n));
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return out;
}

std::string ModeText(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

// Someone other than root and us who can write a key file, or a directory on
// the way to it, can swap the key: refused, saying how to fix it (as ssh
// does for its own files). A sticky directory (/tmp) only lets owners
// replace their own entries, so it passes.
Status CheckOwnerAndMode(const std::filesystem::path& shown, const struct stat& st,
                         bool directory) {
  const uid_t me = ::geteuid();
  if (st.st_uid != 0 && st.st_uid != me) {
    return Status::FailedPrecondition(
        std::string(directory ? "directory " : "key file ") + shown.string() + " is owned by uid " +
        std::to_string(st.st_uid) +
        ", who could replace the key; it must belong to root or to uid " + std::to_string(me) +
        " (fix with: chown " + std::to_string(me) + " " + shown.string() + ")");
  }
  const bool sticky = directory && (st.st_mode & S_ISVTX) != 0;
  if ((st.st_mode & 022) != 0 && !sticky) {
    return Status::FailedPrecondition(
        std::string(directory ? "directory " : "key file ") + shown.string() + " has mode " +
        ModeText(st.st_mode) + ": group or others can write it and replace the key (fix with: " +
        "chmod go-w " + shown.string() + ")");
  }
  return Status::Ok();
}

// The directories from `file`'s parent up to the root.
Status CheckDirectoriesUpFrom(const std::filesystem::path& file) {
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::absolute(file, ec).parent_path();
  if (ec) return Status::IoError("resolve " + file.string() + ": " + ec.message());
  for (;;) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) return Status::FromErrno("stat " + dir.string(), errno);
    MC_RETURN_IF_ERROR(CheckOwnerAndMode(dir, st, /*directory=*/true));
    if (dir == dir.root_path() || dir.empty()) return Status::Ok();
    dir = dir.parent_path();
  }
}

// Checks a key file opened as `fd` and the directories leading to it, both
// as named and (for a symlink) as resolved.
Status CheckKeyFile(int fd, const std::filesystem::path& path, struct stat* st) {
  if (::fstat(fd, st) != 0) return Status::FromErrno("stat " + path.string(), errno);
  if (!S_ISREG(st->st_mode)) {
    return Status::InvalidArgument(path.string() + ": key file is not a regular file");
  }
  MC_RETURN_IF_ERROR(CheckOwnerAndMode(path, *st, /*directory=*/false));
  MC_RETURN_IF_ERROR(CheckDirectoriesUpFrom(path));
  std::error_code ec;
  const std::filesystem::path resolved = std::filesystem::canonical(path, ec);
  if (!ec && resolved != std::filesystem::absolute(path, ec)) {
    MC_RETURN_IF_ERROR(CheckDirectoriesUpFrom(resolved));
  }
  return Status::Ok();
}

PkeyPtr PrivateKeyFromSeed(const std::string& seed) {
  return PkeyPtr(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, Bytes(seed), seed.size()));
}

Result<std::string> DerivePublicRaw(const std::string& seed) {
  PkeyPtr pkey = PrivateKeyFromSeed(seed);
  if (!pkey) return Status::Internal("OpenSSL refused an Ed25519 private key");
  std::string raw(kEd25519PublicKeySize, '\0');
  size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), reinterpret_cast<unsigned char*>(raw.data()), &len) !=
          1 ||
      len != kEd25519PublicKeySize) {
    return Status::Internal("OpenSSL could not derive an Ed25519 public key");
  }
  return raw;
}

// Creates `path` exclusively with `mode`, writes `text`, fsyncs. Never
// replaces an existing file (or follows a symlink planted at `path`).
Status WriteNewFile(const std::filesystem::path& path, std::string_view text, mode_t mode) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!fd.valid()) {
    if (errno == EEXIST) {
      return Status::AlreadyExists(path.string() + " already exists; refusing to overwrite a key");
    }
    return Status::FromErrno("create " + path.string(), errno);
  }
  // The umask can only clear bits; fchmod makes the mode exact.
  if (::fchmod(fd.get(), mode) != 0) return Status::FromErrno("chmod " + path.string(), errno);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("write " + path.string(), errno);
    }
    done += static_cast<size_t>(n);
  }
  MC_RETURN_IF_ERROR(FsyncFd(fd.get(), path.string()));
  if (::close(fd.release()) != 0) return Status::FromErrno("close " + path.string(), errno);
  return Status::Ok();
}

}  // namespace

void WipeSecret(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

Result<std::string> ParseKeyFileLine(std::string_view text, std::string_view prefix,
                                     size_t payload_chars, const std::filesystem::path& path,
                                     std::string_view expected) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ' ||
                           text.back() == '\t')) {
    text.remove_suffix(1);
  }
  if (text.size() != prefix.size() + 1 + payload_chars || text.substr(0, prefix.size()) != prefix ||
      text[prefix.size()] != ' ') {
    return Status::InvalidArgument(path.string() + ": not a mirrorcast key file of this kind (" +
                                   std::string(expected) + ")");
  }
  return std::string(text.substr(prefix.size() + 1));
}

Result<std::string> ReadProtectedFile(const std::filesystem::path& path, KeyFileKind kind,
                                      size_t max_bytes, std::string_view what) {
  const bool secret = kind == KeyFileKind::kSecret;
  const std::string label = secret ? "secret " + std::string(what) : std::string(what);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | (secret ? O_NOFOLLOW : 0)));
  if (!fd.valid()) return Status::FromErrno("open " + label + " " + path.string(), errno);
  // Checked on the open descriptor, so the file read is the file checked.
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("stat " + path.string(), errno);
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(path.string() + ": " + label + " is not a regular file");
  }
  if (secret && (st.st_mode & 077) != 0) {
    return Status::FailedPrecondition(
        label + " " + path.string() + " has mode " + ModeText(st.st_mode) +
        " and is accessible by group or others; fix with: chmod 600 " + path.string());
  }
  MC_RETURN_IF_ERROR(CheckKeyFile(fd.get(), path, &st));
  return ReadKeyFd(fd.get(), path, max_bytes, what);
}

Status SaveKeyPairFiles(const std::filesystem::path& secret_path, std::string_view secret_text,
                        const std::filesystem::path& public_path, std::string_view public_text) {
  // Check the public file first so a clash does not leave a lone secret key.
  struct stat existing {};
  if (::lstat(public_path.c_str(), &existing) == 0) {
    return Status::AlreadyExists(public_path.string() +
                                 " already exists; refusing to overwrite a key");
  }
  if (errno != ENOENT) return Status::FromErrno("stat " + public_path.string(), errno);
  MC_RETURN_IF_ERROR(WriteNewFile(secret_path, secret_text, 0600));
  Status st = WriteNewFile(public_path, public_text, 0644);
  if (!st.ok()) {
    // We created the secret file a moment ago: do not leave half a key pair.
    ::unlink(secret_path.c_str());
    return st;
  }
  std::filesystem::path dir = secret_path.parent_path();
  if (dir.empty()) dir = ".";
  return FsyncDir(dir);
}

// ---------------------------------------------------------------------------
// PublicKey

Result<PublicKey> PublicKey::FromRaw(std::string_view raw32) {
  if (raw32.size() != kEd25519PublicKeySize) {
    return Status::InvalidArgument("Ed25519 public key must be " +
                                   std::to_string(kEd25519PublicKeySize) + " bytes, got " +
                                   std::to_string(raw32.size()));
  }
  PkeyPtr pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, Bytes(raw32), raw32.size()));
  if (!pkey) return Status::InvalidArgument("not a valid Ed25519 public key");
  PublicKey key;
  key.raw_ = std::string(raw32);
  key.key_id_ = ToHex(Sha256Of(raw32).substr(0, 16));
  return key;
}

Result<PublicKey> PublicKey::LoadFile(const std::filesystem::path& path) {
  // A trusted key decides what mirrors accept: checked like a secret one,
  // except that anyone may read it.
  MC_ASSIGN_OR_RETURN(std::string text,
                      ReadProtectedFile(path, KeyFileKind::kPublic, kMaxKeyFileBytes, "key file"));
  MC_ASSIGN_OR_RETURN(std::string raw, ParseKeyText(text, kPublicPrefix, path));
  auto key = FromRaw(raw);
  if (!key.ok()) return key.status().WithContext(path.string());
  return key;
}

bool PublicKey::Verify(std::string_view message, std::string_view signature) const {
  if (signature.size() != kEd25519SignatureSize || raw_.size() != kEd25519PublicKeySize) {
    return false;
  }
  PkeyPtr pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, Bytes(raw_), raw_.size()));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!pkey || !ctx) return false;
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) != 1) return false;
  return EVP_DigestVerify(ctx.get(), Bytes(signature), signature.size(), Bytes(message),
                          message.size()) == 1;
}

std::string PublicKey::ToFileText() const {
  return std::string(kPublicPrefix) + " " + ToHex(raw_) + "\n";
}

// ---------------------------------------------------------------------------
// SigningKey

Result<SigningKey> SigningKey::Generate() {
  std::string seed(kEd25519SeedSize, '\0');
  if (RAND_priv_bytes(reinterpret_cast<unsigned char*>(seed.data()),
                      static_cast<int>(seed.size())) != 1) {
    return Status::Internal("OpenSSL random generator failed");
  }
  auto pub_raw = DerivePublicRaw(seed);
  if (!pub_raw.ok()) {
    WipeSecret(seed);
    return pub_raw.status();
  }
  MC_ASSIGN_OR_RETURN(PublicKey pub, PublicKey::FromRaw(*pub_raw));
  SigningKey key;
  key.seed_ = std::move(seed);
  key.public_key_ = std::move(pub);
  return key;
}

Result<SigningKey> SigningKey::LoadFile(const std::filesystem::path& path) {
  MC_ASSIGN_OR_RETURN(std::string text,
                      ReadProtectedFile(path, KeyFileKind::kSecret, kMaxKeyFileBytes, "key file"));
  auto seed = ParseKeyText(text, kSecretPrefix, path);
  WipeSecret(text);
  if (!seed.ok()) return seed.status();
  auto pub_raw = DerivePublicRaw(*seed);
  if (!pub_raw.ok()) {
    WipeSecret(*seed);
    return pub_raw.status().WithContext(path.string());
  }
  MC_ASSIGN_OR_RETURN(PublicKey pub, PublicKey::FromRaw(*pub_raw));
  SigningKey key;
  key.seed_ = std::move(seed).value();
  key.public_key_ = std::move(pub);
  return key;
}

Status SigningKey::SaveFiles(const std::string& prefix) const {
  if (prefix.empty()) return Status::InvalidArgument("empty key file prefix");
  std::string secret_text = std::string(kSecretPrefix) + " " + ToHex(seed_) + "\n";
  Status st =
      SaveKeyPairFiles(prefix + ".key", secret_text, prefix + ".pub", public_key_.ToFileText());
  WipeSecret(secret_text);
  return st;
}

std::string SigningKey::Sign(std::string_view message) const {
  PkeyPtr pkey = PrivateKeyFromSeed(seed_);
  MdCtxPtr ctx(EVP_MD_CTX_new());
  std::string sig(kEd25519SignatureSize, '\0');
  size_t len = sig.size();
  if (!pkey || !ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, Bytes(message),
                     message.size()) != 1 ||
      len != kEd25519SignatureSize) {
    // Only a default-constructed key (our bug) or a broken OpenSSL gets here;
    // an unsigned event must never go out.
    MC_LOG(fatal) << "Ed25519 signing failed (key loaded: " << (seed_.size() == 32) << ")";
    std::abort();
  }
  return sig;
}

// ---------------------------------------------------------------------------
// TrustStore

Status TrustStore::AddFile(const std::filesystem::path& pub_file) {
  MC_ASSIGN_OR_RETURN(PublicKey key, PublicKey::LoadFile(pub_file));
  Add(key);
  return Status::Ok();
}

void TrustStore::Add(const PublicKey& key) { keys_.insert_or_assign(key.key_id(), key); }

const PublicKey* TrustStore::Find(std::string_view key_id) const {
  auto it = keys_.find(key_id);
  return it == keys_.end() ? nullptr : &it->second;
}

}  // namespace mirrorcast
