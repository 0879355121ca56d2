#include "core/wire/key_trust.h"

#include "core/base/log.h"

namespace mirrorcast {
namespace {

// Which key-set version a signed payload says it was signed under.
uint64_t SignedUnder(const v1::SignedPayload& payload) {
  if (payload.has_repo_changed()) return payload.repo_changed().keyset_version();
  if (payload.has_heartbeat()) return payload.heartbeat().keyset_version();
  return 0;
}

std::string KeyIdOf(std::string_view envelope) {
  v1::Envelope outer;
  if (envelope.size() > kMaxEnvelopeBytes ||
      !outer.ParseFromArray(envelope.data(), static_cast<int>(envelope.size()))) {
    return "?";
  }
  return EscapeForLog(outer.key_id(), 64);
}

}  // namespace

KeyTrust KeyTrust::Fixed(TrustStore events, TrustStore heartbeats) {
  KeyTrust trust;
  trust.events_ = std::move(events);
  trust.heartbeats_ = std::move(heartbeats);
  return trust;
}

KeyTrust KeyTrust::Rooted(TrustStore root) {
  KeyTrust trust;
  trust.rooted_ = true;
  trust.anchor_.keys = std::move(root);
  trust.anchor_.threshold = 1;
  return trust;
}

Result<KeySet> KeyTrust::Check(std::string_view signed_bytes, int64_t now_unix) const {
  if (!rooted_) {
    return Status::FailedPrecondition(
        "key sets need a root key (--root-key); this one uses "
        "fixed keys (--trust)");
  }
  MC_ASSIGN_OR_RETURN(KeySet set, KeySet::Decode(signed_bytes));
  MC_RETURN_IF_ERROR(CheckKeySetUpdate(current(), anchor_, set, now_unix));
  return set;
}

void KeyTrust::Adopt(KeySet set) {
  MC_CHECK(rooted_, "KeyTrust::Adopt in fixed-keys mode");
  current_ = std::move(set);
}

Status KeyTrust::AdoptStored(std::string_view signed_bytes) {
  MC_CHECK(rooted_, "KeyTrust::AdoptStored in fixed-keys mode");
  auto set = KeySet::Decode(signed_bytes);
  if (!set.ok()) return set.status().WithContext("stored key set");
  if (set->SignedBy(set->root()) < set->root().threshold) {
    return Status::Corruption("stored key set version " + std::to_string(set->version()) +
                              " is not signed by its own root");
  }
  if (set->SignedBy(anchor_) == 0) {
    // The chain was followed when it was stored; the configured root only
    // starts it. Said once at start so an operator knows which root rules.
    MC_LOG(info) << "stored key set version " << set->version()
                 << " was reached by root rotation; --root-key only anchors the first key set";
  }
  current_ = std::move(*set);
  return Status::Ok();
}

Status KeyTrust::CheckCurrent(int64_t now_unix) const {
  if (!current_) {
    return Status::Rejected("no key set yet: waiting for one signed by the root key");
  }
  if (now_unix > current_->expires_unix()) {
    return Status::Rejected("key set version " + std::to_string(current_->version()) +
                            " expired at " + std::to_string(current_->expires_unix()) +
                            "; the root must sign a new one (mirrorcast keys publish)");
  }
  return Status::Ok();
}

Result<OpenedEnvelope> KeyTrust::OpenEvent(std::string_view envelope, int64_t now_unix) const {
  if (!rooted_) {
    MC_ASSIGN_OR_RETURN(OpenedEnvelope opened, OpenEnvelope(envelope, events_));
    if (!opened.payload.has_repo_changed()) return Status::Rejected("not a RepoChanged event");
    return opened;
  }
  MC_RETURN_IF_ERROR(CheckCurrent(now_unix));
  const std::string version = std::to_string(current_->version());
  auto opened = OpenEnvelope(envelope, current_->publisher_keys());
  if (!opened.ok()) {
    if (opened.status().message().rfind("unknown signing key", 0) == 0) {
      return Status::Rejected("signing key " + KeyIdOf(envelope) + " is not in key set version " +
                              version + " (revoked, or never listed)");
    }
    return opened.status();
  }
  if (!opened->payload.has_repo_changed()) return Status::Rejected("not a RepoChanged event");
  const v1::RepoChanged& event = opened->payload.repo_changed();
  if (SignedUnder(opened->payload) > current_->version()) {
    return Status::Rejected("event signed under key set version " +
                            std::to_string(SignedUnder(opened->payload)) +
                            ", newer than this one's " + version);
  }
  const auto groups = current_->PublishersFor(event.repo());
  for (const SignerGroup* group : groups) {
    size_t n = 0;
    for (const auto& id : opened->signers) n += group->keys.Find(id) != nullptr ? 1 : 0;
    if (n >= group->threshold) return opened;
  }
  if (groups.empty()) {
    return Status::Rejected("key set version " + version + " names no publisher for repo '" +
                            EscapeForLog(event.repo(), 64) + "'");
  }
  return Status::Rejected("repo '" + EscapeForLog(event.repo(), 64) + "': signed by " +
                          std::to_string(opened->signers.size()) + " key(s) key set version " +
                          version +
                          " allows, fewer than a rule for this repo requires (or not keys of "
                          "its rules)");
}

Result<OpenedEnvelope> KeyTrust::OpenHeartbeat(std::string_view envelope, int64_t now_unix) const {
  Result<OpenedEnvelope> opened = Status::Rejected("no heartbeat key");
  if (!rooted_) {
    opened = OpenEnvelope(envelope, heartbeats_);
  } else {
    MC_RETURN_IF_ERROR(CheckCurrent(now_unix));
    opened =
        OpenEnvelopeSignedBy(envelope, current_->heartbeat().keys, current_->heartbeat().threshold);
    if (!opened.ok() && opened.status().message().rfind("unknown signing key", 0) == 0) {
      return Status::Rejected("heartbeat key " + KeyIdOf(envelope) + " is not in key set version " +
                              std::to_string(current_->version()) + " (revoked, or never listed)");
    }
  }
  if (!opened.ok()) return opened.status();
  if (!opened->payload.has_heartbeat())
    return Status::Rejected("heartbeat key signed something else");
  if (rooted_ && SignedUnder(opened->payload) > current_->version()) {
    return Status::Rejected("heartbeat signed under key set version " +
                            std::to_string(SignedUnder(opened->payload)) +
                            ", newer than this one's " + std::to_string(current_->version()));
  }
  return opened;
}

bool KeyTrust::IsEventKey(std::string_view key_id) const {
  if (!rooted_) return events_.Find(key_id) != nullptr;
  return current_ && current_->publisher_keys().Find(key_id) != nullptr;
}

bool KeyTrust::IsHeartbeatKey(std::string_view key_id) const {
  if (!rooted_) return heartbeats_.Find(key_id) != nullptr;
  return current_ && current_->heartbeat().keys.Find(key_id) != nullptr;
}

bool KeyTrust::HasHeartbeatKeys() const {
  if (!rooted_) return !heartbeats_.empty();
  return current_ && !current_->heartbeat().keys.empty();
}

std::string KeyTrust::Describe() const {
  if (!rooted_) {
    return "fixed keys: " + std::to_string(events_.size()) + " event, " +
           std::to_string(heartbeats_.size()) + " heartbeat";
  }
  if (!current_) return "root key, no key set yet";
  return "key set version " + std::to_string(current_->version());
}

Result<KeyTrust> LoadKeyTrust(const std::vector<std::filesystem::path>& trust,
                              const std::vector<std::filesystem::path>& heartbeat_trust,
                              const std::vector<std::filesystem::path>& root_keys) {
  if (!root_keys.empty()) {
    if (!trust.empty() || !heartbeat_trust.empty()) {
      return Status::InvalidArgument(
          "--root-key replaces --trust and --heartbeat-trust (the key set names those keys); "
          "give one or the other");
    }
    TrustStore roots;
    for (const auto& file : root_keys) {
      MC_RETURN_IF_ERROR(roots.AddFile(file).WithContext("root key " + file.string()));
    }
    return KeyTrust::Rooted(std::move(roots));
  }
  if (trust.empty()) {
    return Status::InvalidArgument("no trusted origin key (--trust) and no root key (--root-key)");
  }
  TrustStore events;
  for (const auto& file : trust) {
    MC_RETURN_IF_ERROR(events.AddFile(file).WithContext("trust key " + file.string()));
  }
  TrustStore heartbeats;
  for (const auto& file : heartbeat_trust) {
    MC_RETURN_IF_ERROR(heartbeats.AddFile(file).WithContext("heartbeat key " + file.string()));
  }
  return KeyTrust::Fixed(std::move(events), std::move(heartbeats));
}

Result<KeyTrust> ReloadKeyTrust(const KeyTrust& current,
                                const std::vector<std::filesystem::path>& trust,
                                const std::vector<std::filesystem::path>& heartbeat_trust,
                                const std::vector<std::filesystem::path>& root_keys) {
  MC_ASSIGN_OR_RETURN(KeyTrust next, LoadKeyTrust(trust, heartbeat_trust, root_keys));
  if (next.rooted() && current.current() != nullptr) {
    MC_RETURN_IF_ERROR(next.AdoptStored(current.current()->bytes())
                           .WithContext("the key set in force (version " +
                                        std::to_string(current.version()) + ")"));
  }
  return next;
}

}  // namespace mirrorcast
