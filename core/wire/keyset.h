// Key sets: which keys may sign what, signed by an offline root key
// (docs/protocol.md, "Key sets"; docs/operations.md for rotations).
//
// A KeySet is a decoded, shape-checked SignedKeySet: the exact bytes that
// were signed are kept (never re-serialized), and every list, key and
// threshold is bounded. Whether a key set may replace the current one is
// CheckKeySetUpdate's decision; KeyTrust (core/wire/key_trust.h) holds the
// current one and judges events and heartbeats with it.
//
// Immutable after Decode(); safe to share across threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "core/crypto/keys.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

// Limits on a key set from a peer or a file. A SignedKeySet fits in one
// small control request (ControlLimits::small_request_bytes).
inline constexpr size_t kMaxKeySetBytes = 32u << 10;
inline constexpr int kMaxKeySetKeys = 64;        // per group
inline constexpr int kMaxKeySetRules = 64;       // publisher rules
inline constexpr int kMaxKeySetPatterns = 64;    // repo patterns per rule
inline constexpr int kMaxKeySetResets = 64;      // serial resets
inline constexpr int kMaxKeySetSignatures = 16;  // signatures on one set
inline constexpr size_t kMaxKeySetCommentBytes = 256;
inline constexpr std::string_view kKeySetDomain{"mirrorcast-keyset-v1\0", 21};

// The keys of one role and how many distinct ones must sign (at least 1).
struct SignerGroup {
  TrustStore keys;
  uint32_t threshold = 1;
};

// "*" (every repo), an exact repo name, or a prefix followed by '*'.
Status ValidateRepoPattern(std::string_view pattern);
bool RepoPatternMatches(std::string_view pattern, std::string_view repo);

class KeySet {
 public:
  // Decodes serialized SignedKeySet bytes from a peer, a file or the state:
  // size cap, protocol versions, every key a valid 32-byte Ed25519 key,
  // lists within their limits, thresholds 0..n (0 means 1), valid repo
  // patterns and resets, a version above 0 and an expiry. Signatures are
  // not checked here (SignedBy). Never asserts on bad input.
  static Result<KeySet> Decode(std::string_view signed_bytes);

  uint64_t version() const { return body_.version(); }
  int64_t expires_unix() const { return body_.expires_unix(); }
  const v1::KeySet& body() const { return body_; }
  const v1::SignedKeySet& signed_set() const { return signed_; }
  // The SignedKeySet as received (what is stored and handed on).
  const std::string& bytes() const { return bytes_; }

  const SignerGroup& root() const { return root_; }
  const SignerGroup& heartbeat() const { return heartbeat_; }
  // Every key of every publisher rule (who could sign some event).
  const TrustStore& publisher_keys() const { return publisher_keys_; }
  // The rules whose patterns match `repo`, in order.
  std::vector<const SignerGroup*> PublishersFor(std::string_view repo) const;
  // The reset declared for `repo`, if any.
  std::optional<v1::SerialReset> ResetFor(std::string_view repo) const;

  // Distinct keys of `group` with a valid signature on this set.
  size_t SignedBy(const SignerGroup& group) const;
  // Key ids of the signatures on this set that verify against `group`.
  std::vector<std::string> SignersIn(const SignerGroup& group) const;

 private:
  std::string bytes_;
  v1::SignedKeySet signed_;
  v1::KeySet body_;
  SignerGroup root_;
  SignerGroup heartbeat_;
  struct Rule {
    std::vector<std::string> patterns;
    SignerGroup signers;
  };
  std::vector<Rule> rules_;
  TrustStore publisher_keys_;
};

// Whether `candidate` may become the current key set at `now_unix`:
//  - not expired (and an expiry is set: Decode checks that);
//  - its version strictly above `current`'s (the same version with the
//    same body is AlreadyExists; anything else older or equal is Rejected);
//  - signed by the current root: threshold-many distinct keys of
//    `current`->root(), or of `anchor` (the configured --root-key) before
//    any key set was accepted;
//  - signed by its own root the same way, so that a rotation to a new root
//    needs both the old and the new root's signatures.
Status CheckKeySetUpdate(const KeySet* current, const SignerGroup& anchor, const KeySet& candidate,
                         int64_t now_unix);

// A SignedKeySet of `body` (protocol versions set here) without signatures.
std::string MakeUnsignedKeySet(v1::KeySet body);
// Adds a signature by each of `keys` to the SignedKeySet `signed_bytes` (the
// signed key_set bytes are kept as they are); a key that already signed is
// skipped. Returns the new SignedKeySet bytes.
Result<std::string> AddKeySetSignatures(std::string_view signed_bytes,
                                        const std::vector<const SigningKey*>& keys);

// A multi-line human description of `set`, for `mirrorcast keys show`.
std::string DescribeKeySet(const KeySet& set);

}  // namespace mirrorcast
