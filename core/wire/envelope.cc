#include "core/wire/envelope.h"

#include <algorithm>

#include "core/crypto/sha256.h"
#include "core/fs/path.h"
#include "core/manifest/manifest.h"

namespace mirrorcast {
namespace {

// Bounds the work a single event can ask of a verifier. An envelope is at most
// kMaxEnvelopeBytes, so this only matters if that limit grows.
// A carried change list is bounded by kMaxInlineChangeBytes anyway.
constexpr int kMaxChanges = 1'000'000;

// A peer-supplied string made safe for a log line or error message.
std::string Printable(std::string_view s, size_t max_chars = 80) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_chars; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kDigits[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 0xf]);
    }
  }
  if (s.size() > max_chars) out += "...";
  return out;
}

std::string SignedBytes(std::string_view payload) {
  std::string msg;
  msg.reserve(kEnvelopeDomain.size() + payload.size());
  msg.append(kEnvelopeDomain);
  msg.append(payload);
  return msg;
}

bool KnownEntryKind(v1::EntryKind kind) {
  return kind == v1::ENTRY_FILE || kind == v1::ENTRY_SYMLINK || kind == v1::ENTRY_DIRECTORY;
}

Status CheckChange(const v1::Change& change) {
  const v1::FileEntry& entry = change.entry();
  MC_RETURN_IF_ERROR(ValidateRelativePath(entry.path()));
  if (!change.previous_sha256().empty() && change.previous_sha256().size() != kSha256Size) {
    return Status::Rejected("previous_sha256 is " +
                            std::to_string(change.previous_sha256().size()) + " bytes, expected " +
                            std::to_string(kSha256Size));
  }
  switch (change.kind()) {
    case v1::CHANGE_ADDED:
      if (!change.previous_sha256().empty()) {
        return Status::Rejected("an added path cannot carry previous_sha256");
      }
      return CheckEntry(entry);
    case v1::CHANGE_MODIFIED:
      return CheckEntry(entry);
    case v1::CHANGE_DELETED:
      // A deletion names the path and its kind, nothing else.
      if (!KnownEntryKind(entry.kind())) {
        return Status::Rejected("deleted entry of unknown kind " + std::to_string(entry.kind()));
      }
      if (entry.size() != 0 || !entry.sha256().empty() || entry.mode() != 0 || entry.mtime() != 0 ||
          !entry.symlink_target().empty()) {
        return Status::Rejected("a deleted entry carries only its path and kind");
      }
      return Status::Ok();
    default:
      return Status::Rejected("unknown change kind " + std::to_string(change.kind()));
  }
}

// Every failure of an event check is a verification refusal.
Status AsRejected(const Status& status, std::string_view context) {
  if (status.ok()) return status;
  return Status::Rejected(std::string(context) + ": " + status.message());
}

}  // namespace

std::string SealEnvelope(v1::SignedPayload payload, const SigningKey& key) {
  return SealEnvelope(std::move(payload), std::vector<const SigningKey*>{&key});
}

std::string SealEnvelope(v1::SignedPayload payload, const std::vector<const SigningKey*>& keys) {
  MC_CHECK(!keys.empty() && keys.size() <= 1 + kMaxCosignatures, "SealEnvelope: 1-16 keys");
  payload.set_protocol_version(kProtocolVersion);
  v1::Envelope envelope;
  envelope.set_protocol_version(kProtocolVersion);
  std::string* bytes = envelope.mutable_payload();
  payload.SerializeToString(bytes);
  const std::string signed_bytes = SignedBytes(*bytes);
  envelope.set_signature(keys[0]->Sign(signed_bytes));
  envelope.set_key_id(keys[0]->public_key().key_id());
  for (size_t i = 1; i < keys.size(); ++i) {
    v1::Signature* co = envelope.add_cosignatures();
    co->set_key_id(keys[i]->public_key().key_id());
    co->set_signature(keys[i]->Sign(signed_bytes));
  }
  return envelope.SerializeAsString();
}

Result<OpenedEnvelope> OpenEnvelope(std::string_view envelope_bytes, const TrustStore& trust) {
  return OpenEnvelopeSignedBy(envelope_bytes, trust, 1);
}

Result<OpenedEnvelope> OpenEnvelopeSignedBy(std::string_view envelope_bytes,
                                            const TrustStore& trust, size_t threshold) {
  if (envelope_bytes.size() > kMaxEnvelopeBytes) {
    return Status::ResourceExhausted("envelope of " + std::to_string(envelope_bytes.size()) +
                                     " bytes exceeds the limit of " +
                                     std::to_string(kMaxEnvelopeBytes));
  }
  v1::Envelope envelope;
  if (!envelope.ParseFromArray(envelope_bytes.data(), static_cast<int>(envelope_bytes.size()))) {
    return Status::InvalidArgument("malformed envelope");
  }
  if (envelope.protocol_version() != kProtocolVersion) {
    return Status::Rejected("unsupported envelope protocol version " +
                            std::to_string(envelope.protocol_version()) + " (expected " +
                            std::to_string(kProtocolVersion) + ")");
  }
  if (envelope.cosignatures_size() > kMaxCosignatures) {
    return Status::Rejected("envelope carries " + std::to_string(envelope.cosignatures_size()) +
                            " cosignatures, more than " + std::to_string(kMaxCosignatures));
  }
  const PublicKey* key = trust.Find(envelope.key_id());
  if (key == nullptr && envelope.cosignatures_size() == 0) {
    return Status::Rejected("unknown signing key " + Printable(envelope.key_id()));
  }
  // Verified on the exact bytes received; nothing is parsed before this.
  // Each trusted key counts once, however many signatures name it.
  const std::string signed_bytes = SignedBytes(envelope.payload());
  std::vector<std::string> signers;
  auto count = [&](const std::string& key_id, const std::string& signature) {
    const PublicKey* signer = trust.Find(key_id);
    if (signer == nullptr) return;
    for (const auto& seen : signers) {
      if (seen == signer->key_id()) return;
    }
    if (signer->Verify(signed_bytes, signature)) signers.push_back(signer->key_id());
  };
  count(envelope.key_id(), envelope.signature());
  for (const auto& co : envelope.cosignatures()) count(co.key_id(), co.signature());
  if (signers.empty() && key != nullptr) {
    return Status::Rejected("bad signature (key " + key->key_id() + ")");
  }
  if (signers.empty()) {
    return Status::Rejected("unknown signing key " + Printable(envelope.key_id()) +
                            " (and no trusted cosignature)");
  }
  if (signers.size() < std::max<size_t>(threshold, 1)) {
    return Status::Rejected("signed by " + std::to_string(signers.size()) +
                            " distinct trusted key(s), " + std::to_string(threshold) + " required");
  }
  const std::string& first = signers.front();
  OpenedEnvelope opened;
  if (!opened.payload.ParseFromString(envelope.payload())) {
    return Status::InvalidArgument("malformed signed payload (key " + first + ")");
  }
  if (opened.payload.protocol_version() != kProtocolVersion) {
    return Status::Rejected("unsupported payload protocol version " +
                            std::to_string(opened.payload.protocol_version()) + " (expected " +
                            std::to_string(kProtocolVersion) + ")");
  }
  if (opened.payload.body_case() == v1::SignedPayload::BODY_NOT_SET) {
    return Status::Rejected("signed payload carries no known body");
  }
  opened.key_id = first;
  opened.signers = std::move(signers);
  return opened;
}

Status CheckRepoChanged(const v1::RepoChanged& event, int64_t now_unix) {
  MC_RETURN_IF_ERROR(AsRejected(ValidateRepoName(event.repo()), "repo name"));
  const std::string where = "repo " + event.repo() + " serial " + std::to_string(event.serial());
  if (event.serial() <= event.previous_serial()) {
    return Status::Rejected(where + ": serial is not greater than previous serial " +
                            std::to_string(event.previous_serial()));
  }
  if (event.manifest_sha256().size() != kSha256Size) {
    return Status::Rejected(where + ": manifest digest is " +
                            std::to_string(event.manifest_sha256().size()) + " bytes, expected " +
                            std::to_string(kSha256Size));
  }
  // An event that never expires could be replayed for ever, and one stamped
  // far in the future outlives its signer's intent.
  if (event.expires_unix() == 0) {
    return Status::Rejected(where + ": has no expiry time (expires_unix 0); events must expire");
  }
  if (event.published_unix() > now_unix + kMaxClockSkewSeconds) {
    return Status::Rejected(where + ": published at " + std::to_string(event.published_unix()) +
                            ", more than " + std::to_string(kMaxClockSkewSeconds) +
                            " s in the future (now " + std::to_string(now_unix) +
                            "); check the publisher's clock");
  }
  if (now_unix > event.expires_unix()) {
    return Status::Rejected(where + ": expired at " + std::to_string(event.expires_unix()) +
                            " (now " + std::to_string(now_unix) + ")");
  }
  if (event.expires_unix() < event.published_unix()) {
    return Status::Rejected(where + ": expires (" + std::to_string(event.expires_unix()) +
                            ") before it was published (" + std::to_string(event.published_unix()) +
                            ")");
  }
  if (event.changes_omitted()) {
    if (event.changes_size() != 0) {
      return Status::Rejected(where + ": carries changes it says are omitted");
    }
  } else if (event.change_count() != static_cast<uint64_t>(event.changes_size())) {
    return Status::Rejected(where + ": carries " + std::to_string(event.changes_size()) +
                            " changes but counts " + std::to_string(event.change_count()));
  }
  // A recall names an earlier serial and says why, in a bounded line of
  // text that every log and status page shows (escaped).
  if (event.recall_of() == 0) {
    if (!event.recall_reason().empty()) {
      return Status::Rejected(where + ": carries a recall reason but is not a recall");
    }
  } else {
    if (event.recall_of() >= event.previous_serial()) {
      return Status::Rejected(where + ": recalls serial " + std::to_string(event.recall_of()) +
                              ", which is not before the serial it follows (" +
                              std::to_string(event.previous_serial()) + ")");
    }
    if (event.recall_reason().empty() || event.recall_reason().size() > kMaxRecallReasonBytes) {
      return Status::Rejected(where + ": a recall reason must be 1-" +
                              std::to_string(kMaxRecallReasonBytes) + " bytes, got " +
                              std::to_string(event.recall_reason().size()));
    }
    for (unsigned char c : event.recall_reason()) {
      if (c < 0x20 || c == 0x7f) {
        return Status::Rejected(where + ": the recall reason contains a control character");
      }
    }
  }
  if (event.changes_size() > kMaxChanges) {
    return Status::Rejected(where + ": " + std::to_string(event.changes_size()) +
                            " changes exceed the limit of " + std::to_string(kMaxChanges));
  }
  // One change per path, in path order: the apply reorders changes (content
  // first, metadata last, deletions at the end), and the manifest chunks
  // are re-derived in one ordered pass.
  for (int i = 0; i < event.changes_size(); ++i) {
    const v1::Change& change = event.changes(i);
    Status st = CheckChange(change);
    if (!st.ok()) {
      return AsRejected(st, where + ": change " + std::to_string(i) + " (" +
                                Printable(change.entry().path()) + ")");
    }
    if (i > 0 && !(event.changes(i - 1).entry().path() < change.entry().path())) {
      return Status::Rejected(where + ": path " + Printable(change.entry().path()) +
                              (event.changes(i - 1).entry().path() == change.entry().path()
                                   ? " changed more than once"
                                   : " is out of path order"));
    }
  }
  return Status::Ok();
}

Status CheckHeartbeat(const v1::Heartbeat& heartbeat, int64_t now_unix) {
  const std::string where = "heartbeat issued at " + std::to_string(heartbeat.issued_unix());
  if (heartbeat.expires_unix() == 0) {
    return Status::Rejected(where +
                            ": has no expiry time (expires_unix 0); heartbeats must expire");
  }
  if (heartbeat.issued_unix() > now_unix + kMaxClockSkewSeconds) {
    return Status::Rejected(where + ": more than " + std::to_string(kMaxClockSkewSeconds) +
                            " s in the future (now " + std::to_string(now_unix) +
                            "); check the origin broker's clock");
  }
  if (now_unix > heartbeat.expires_unix()) {
    return Status::Rejected(where + ": expired at " + std::to_string(heartbeat.expires_unix()) +
                            " (now " + std::to_string(now_unix) + ")");
  }
  if (heartbeat.expires_unix() < heartbeat.issued_unix()) {
    return Status::Rejected(where + ": expires (" + std::to_string(heartbeat.expires_unix()) +
                            ") before it was issued");
  }
  return Status::Ok();
}

Status ValidateRepoName(std::string_view repo) {
  if (repo.empty() || repo.size() > 64) {
    return Status::InvalidArgument("repo name must be 1-64 characters, got " +
                                   std::to_string(repo.size()));
  }
  if (repo.front() == '.') {
    return Status::InvalidArgument("repo name " + Printable(repo) + " starts with '.'");
  }
  for (char c : repo) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return Status::InvalidArgument("repo name " + Printable(repo) +
                                     " may only contain A-Z a-z 0-9 . _ -");
    }
  }
  return Status::Ok();
}

}  // namespace mirrorcast
