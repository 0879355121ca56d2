// Which keys a verifier (a mirror's follower, a broker) accepts for events
// and heartbeats, in one of two modes:
//
//  - fixed keys (--trust, --heartbeat-trust): a key listed may sign events
//    of any repo (or heartbeats); nothing rotates without a restart;
//  - a root key (--root-key): the keys come from the current key set
//    (core/wire/keyset.h), which a new one replaces only when it is signed
//    by the current root (and by its own root), is newer and not expired.
//    Until a first key set arrives nothing is accepted.
//
// Events and heartbeats carry the key-set version they were signed under;
// one naming a newer version than the current one is refused (the caller
// fetches the broker's key set first), one signed by a key the current set
// no longer lists is refused as revoked.
//
// Not thread-safe: owned by one thread (the follower's, the broker's
// control thread).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "core/crypto/keys.h"
#include "core/wire/envelope.h"
#include "core/wire/keyset.h"

namespace mirrorcast {

class KeyTrust {
 public:
  // Fixed keys: `events` sign events of every repo, `heartbeats` heartbeats.
  static KeyTrust Fixed(TrustStore events, TrustStore heartbeats = {});
  // Rooted: `root` (threshold 1 of its keys) signs the first key set.
  static KeyTrust Rooted(TrustStore root);

  bool rooted() const { return rooted_; }
  // The adopted key set (rooted mode; nullptr before the first).
  const KeySet* current() const { return current_ ? &*current_ : nullptr; }
  uint64_t version() const { return current_ ? current_->version() : 0; }

  // Decodes `signed_bytes` and checks that it may replace the current key
  // set at `now_unix` (CheckKeySetUpdate). Adopts nothing: the caller makes
  // it durable first, then calls Adopt. AlreadyExists for the current one;
  // FailedPrecondition in fixed-keys mode.
  Result<KeySet> Check(std::string_view signed_bytes, int64_t now_unix) const;
  // Makes `set` (checked) the current key set.
  void Adopt(KeySet set);
  // A key set read back from the verifier's own durable state: accepted when
  // it is signed by its own root (it was checked against the chain when it
  // was stored). Its expiry is not checked here: an expired set still names
  // the root the next one must be signed by.
  Status AdoptStored(std::string_view signed_bytes);

  // Verifies an event envelope at `now_unix`: signatures of keys that may
  // publish, then the payload (a RepoChanged), then the rule of its repo
  // (threshold of distinct signers) and its key-set version.
  Result<OpenedEnvelope> OpenEvent(std::string_view envelope, int64_t now_unix) const;
  // The same for a heartbeat envelope (heartbeat keys only).
  Result<OpenedEnvelope> OpenHeartbeat(std::string_view envelope, int64_t now_unix) const;

  // Whether `key_id` may sign events of some repo / heartbeats.
  bool IsEventKey(std::string_view key_id) const;
  bool IsHeartbeatKey(std::string_view key_id) const;
  // Whether heartbeats can be verified at all (freshness tracking).
  bool HasHeartbeatKeys() const;
  // Keys of every role, for logs: "fixed keys: 2 event, 1 heartbeat" or
  // "key set version 3".
  std::string Describe() const;

 private:
  // Rooted mode: refuses when no key set is current or it has expired.
  Status CheckCurrent(int64_t now_unix) const;

  bool rooted_ = false;
  TrustStore events_;      // fixed mode
  TrustStore heartbeats_;  // fixed mode
  SignerGroup anchor_;     // rooted mode: the configured root
  std::optional<KeySet> current_;
};

// The KeyTrust a daemon's flags describe: fixed keys from the --trust and
// --heartbeat-trust files, or a root from the --root-key files (one mode:
// both at once is refused, and so is neither).
Result<KeyTrust> LoadKeyTrust(const std::vector<std::filesystem::path>& trust,
                              const std::vector<std::filesystem::path>& heartbeat_trust,
                              const std::vector<std::filesystem::path>& root_keys);

// A reload (SIGHUP): the same files read again. In rooted mode the key set
// in force is kept (AdoptStored: it stays valid under its own root), so a
// reload never forgets an adopted rotation. On any error the caller keeps
// `current`.
Result<KeyTrust> ReloadKeyTrust(const KeyTrust& current,
                                const std::vector<std::filesystem::path>& trust,
                                const std::vector<std::filesystem::path>& heartbeat_trust,
                                const std::vector<std::filesystem::path>& root_keys);

}  // namespace mirrorcast
