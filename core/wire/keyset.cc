#include "core/wire/keyset.h"

#include <algorithm>
#include <set>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/wire/envelope.h"

namespace mirrorcast {
namespace {

std::string SignedBytes(std::string_view key_set) {
  std::string msg;
  msg.reserve(kKeySetDomain.size() + key_set.size());
  msg.append(kKeySetDomain);
  msg.append(key_set);
  return msg;
}

// Decodes one group of `what`: valid keys, none twice, threshold 0..n.
Status DecodeGroup(const v1::KeyGroup& in, const std::string& what, bool may_be_empty,
                   SignerGroup* out) {
  if (in.keys_size() > kMaxKeySetKeys) {
    return Status::Rejected(what + ": " + std::to_string(in.keys_size()) + " keys, more than " +
                            std::to_string(kMaxKeySetKeys));
  }
  if (in.keys_size() == 0 && !may_be_empty) return Status::Rejected(what + ": no keys");
  for (const auto& raw : in.keys()) {
    auto key = PublicKey::FromRaw(raw);
    if (!key.ok()) return Status::Rejected(what + ": " + key.status().message());
    if (out->keys.Find(key->key_id()) != nullptr) {
      return Status::Rejected(what + ": key " + key->key_id() + " is listed twice");
    }
    out->keys.Add(*key);
  }
  if (in.threshold() > static_cast<uint32_t>(in.keys_size())) {
    return Status::Rejected(what + ": threshold " + std::to_string(in.threshold()) +
                            " is more than its " + std::to_string(in.keys_size()) + " keys");
  }
  out->threshold = std::max<uint32_t>(in.threshold(), 1);
  return Status::Ok();
}

bool Printable(std::string_view text) {
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

}  // namespace

Status ValidateRepoPattern(std::string_view pattern) {
  if (pattern == "*") return Status::Ok();
  std::string_view name = pattern;
  if (!name.empty() && name.back() == '*') {
    name.remove_suffix(1);
    if (name.empty()) return Status::Ok();
  }
  // A prefix is checked as a repo name would be (the '*' aside).
  Status s = ValidateRepoName(name);
  if (!s.ok()) {
    return Status::Rejected("repo pattern " + EscapeForLog(pattern, 80) + ": " + s.message());
  }
  return Status::Ok();
}

bool RepoPatternMatches(std::string_view pattern, std::string_view repo) {
  if (!pattern.empty() && pattern.back() == '*') {
    pattern.remove_suffix(1);
    return repo.substr(0, pattern.size()) == pattern;
  }
  return pattern == repo;
}

Result<KeySet> KeySet::Decode(std::string_view signed_bytes) {
  if (signed_bytes.size() > kMaxKeySetBytes) {
    return Status::ResourceExhausted("key set of " + std::to_string(signed_bytes.size()) +
                                     " bytes exceeds the limit of " +
                                     std::to_string(kMaxKeySetBytes));
  }
  KeySet set;
  if (!set.signed_.ParseFromArray(signed_bytes.data(), static_cast<int>(signed_bytes.size()))) {
    return Status::InvalidArgument("malformed signed key set");
  }
  if (set.signed_.protocol_version() != kProtocolVersion) {
    return Status::Rejected("unsupported key-set protocol version " +
                            std::to_string(set.signed_.protocol_version()));
  }
  if (set.signed_.signatures_size() > kMaxKeySetSignatures) {
    return Status::Rejected("key set carries " + std::to_string(set.signed_.signatures_size()) +
                            " signatures, more than " + std::to_string(kMaxKeySetSignatures));
  }
  if (!set.body_.ParseFromString(set.signed_.key_set())) {
    return Status::InvalidArgument("malformed key set body");
  }
  const v1::KeySet& body = set.body_;
  if (body.protocol_version() != kProtocolVersion) {
    return Status::Rejected("unsupported key-set body protocol version " +
                            std::to_string(body.protocol_version()));
  }
  if (body.version() == 0) return Status::Rejected("key set version 0 (versions start at 1)");
  const std::string where = "key set version " + std::to_string(body.version());
  if (body.expires_unix() == 0) {
    return Status::Rejected(where + ": has no expiry time; key sets must expire");
  }
  if (body.expires_unix() < body.issued_unix()) {
    return Status::Rejected(where + ": expires before it was issued");
  }
  if (body.comment().size() > kMaxKeySetCommentBytes || !Printable(body.comment())) {
    return Status::Rejected(where + ": comment must be at most " +
                            std::to_string(kMaxKeySetCommentBytes) + " printable bytes");
  }
  MC_RETURN_IF_ERROR(DecodeGroup(body.root(), where + " root", false, &set.root_));
  MC_RETURN_IF_ERROR(DecodeGroup(body.heartbeat(), where + " heartbeat", true, &set.heartbeat_));
  if (body.publishers_size() > kMaxKeySetRules) {
    return Status::Rejected(where + ": " + std::to_string(body.publishers_size()) +
                            " publisher rules, more than " + std::to_string(kMaxKeySetRules));
  }
  for (int i = 0; i < body.publishers_size(); ++i) {
    const v1::PublisherRule& in = body.publishers(i);
    const std::string rule = where + " publisher rule " + std::to_string(i + 1);
    if (in.repos_size() == 0 || in.repos_size() > kMaxKeySetPatterns) {
      return Status::Rejected(rule + ": 1-" + std::to_string(kMaxKeySetPatterns) +
                              " repo patterns required");
    }
    Rule out;
    for (const auto& pattern : in.repos()) {
      MC_RETURN_IF_ERROR(ValidateRepoPattern(pattern).WithContext(rule));
      out.patterns.push_back(pattern);
    }
    MC_RETURN_IF_ERROR(DecodeGroup(in.signers(), rule, false, &out.signers));
    for (const auto& raw : in.signers().keys()) {
      set.publisher_keys_.Add(PublicKey::FromRaw(raw).value());
    }
    set.rules_.push_back(std::move(out));
  }
  if (body.resets_size() > kMaxKeySetResets) {
    return Status::Rejected(where + ": " + std::to_string(body.resets_size()) +
                            " serial resets, more than " + std::to_string(kMaxKeySetResets));
  }
  std::set<std::string> reset_repos;
  for (const auto& reset : body.resets()) {
    if (Status s = ValidateRepoName(reset.repo()); !s.ok()) {
      return Status::Rejected(where + ": serial reset: " + s.message());
    }
    if (!reset_repos.insert(reset.repo()).second) {
      return Status::Rejected(where + ": two serial resets for repo " + reset.repo());
    }
    if (reset.since_version() == 0 || reset.since_version() > body.version()) {
      return Status::Rejected(where + ": serial reset of " + reset.repo() +
                              " needs since_version 1.." + std::to_string(body.version()));
    }
  }
  set.bytes_ = std::string(signed_bytes);
  return set;
}

std::vector<const SignerGroup*> KeySet::PublishersFor(std::string_view repo) const {
  std::vector<const SignerGroup*> out;
  for (const Rule& rule : rules_) {
    for (const auto& pattern : rule.patterns) {
      if (RepoPatternMatches(pattern, repo)) {
        out.push_back(&rule.signers);
        break;
      }
    }
  }
  return out;
}

std::optional<v1::SerialReset> KeySet::ResetFor(std::string_view repo) const {
  for (const auto& reset : body_.resets()) {
    if (reset.repo() == repo) return reset;
  }
  return std::nullopt;
}

std::vector<std::string> KeySet::SignersIn(const SignerGroup& group) const {
  const std::string message = SignedBytes(signed_.key_set());
  std::vector<std::string> signers;
  for (const auto& sig : signed_.signatures()) {
    const PublicKey* key = group.keys.Find(sig.key_id());
    if (key == nullptr) continue;
    bool seen = false;
    for (const auto& s : signers) seen = seen || s == key->key_id();
    if (seen) continue;  // a key counts once
    if (key->Verify(message, sig.signature())) signers.push_back(key->key_id());
  }
  return signers;
}

size_t KeySet::SignedBy(const SignerGroup& group) const { return SignersIn(group).size(); }

Status CheckKeySetUpdate(const KeySet* current, const SignerGroup& anchor, const KeySet& candidate,
                         int64_t now_unix) {
  const std::string where = "key set version " + std::to_string(candidate.version());
  if (current != nullptr) {
    if (candidate.version() == current->version() &&
        candidate.signed_set().key_set() == current->signed_set().key_set()) {
      return Status::AlreadyExists(where + " is the current one");
    }
    if (candidate.version() <= current->version()) {
      return Status::Rejected(where + " is not newer than the current version " +
                              std::to_string(current->version()) +
                              " (key-set versions never go backwards)");
    }
  }
  if (now_unix > candidate.expires_unix()) {
    // No `now` in the text: a refusal repeated each poll is reported once.
    return Status::Rejected(where + " expired at " + FormatUtc(candidate.expires_unix()));
  }
  const SignerGroup& root = current != nullptr ? current->root() : anchor;
  const size_t by_current = candidate.SignedBy(root);
  if (by_current < root.threshold) {
    return Status::Rejected(
        where + " is not signed by the current root: " + std::to_string(by_current) + " of the " +
        std::to_string(root.threshold) + " required signature(s) (" +
        std::to_string(root.keys.size()) + " root key(s))");
  }
  const size_t by_own = candidate.SignedBy(candidate.root());
  if (by_own < candidate.root().threshold) {
    return Status::Rejected(where +
                            " names a root that did not sign it: " + std::to_string(by_own) +
                            " of the " + std::to_string(candidate.root().threshold) +
                            " required signature(s) of its own root (a root rotation is signed "
                            "by the old and the new root)");
  }
  return Status::Ok();
}

std::string MakeUnsignedKeySet(v1::KeySet body) {
  body.set_protocol_version(kProtocolVersion);
  v1::SignedKeySet out;
  out.set_protocol_version(kProtocolVersion);
  body.SerializeToString(out.mutable_key_set());
  return out.SerializeAsString();
}

Result<std::string> AddKeySetSignatures(std::string_view signed_bytes,
                                        const std::vector<const SigningKey*>& keys) {
  if (signed_bytes.size() > kMaxKeySetBytes) {
    return Status::ResourceExhausted("key set exceeds " + std::to_string(kMaxKeySetBytes) +
                                     " bytes");
  }
  v1::SignedKeySet set;
  if (!set.ParseFromArray(signed_bytes.data(), static_cast<int>(signed_bytes.size()))) {
    return Status::InvalidArgument("malformed signed key set");
  }
  const std::string message = SignedBytes(set.key_set());
  for (const SigningKey* key : keys) {
    bool already = false;
    for (const auto& sig : set.signatures()) {
      already = already || sig.key_id() == key->public_key().key_id();
    }
    if (already) continue;
    if (set.signatures_size() >= kMaxKeySetSignatures) {
      return Status::ResourceExhausted("a key set carries at most " +
                                       std::to_string(kMaxKeySetSignatures) + " signatures");
    }
    v1::Signature* sig = set.add_signatures();
    sig->set_key_id(key->public_key().key_id());
    sig->set_signature(key->Sign(message));
  }
  return set.SerializeAsString();
}

namespace {

void DescribeGroup(std::string& out, const std::string& title, const v1::KeyGroup& group) {
  out += title + " (" + std::to_string(std::max<uint32_t>(group.threshold(), 1)) + " of " +
         std::to_string(group.keys_size()) + " must sign):\n";
  for (const auto& raw : group.keys()) {
    auto key = PublicKey::FromRaw(raw);
    out += "    " + (key.ok() ? key->key_id() : std::string("(invalid key)")) + "\n";
  }
}

}  // namespace

std::string DescribeKeySet(const KeySet& set) {
  const v1::KeySet& body = set.body();
  std::string out;
  out += "key set version " + std::to_string(body.version()) + "\n";
  out += "  issued:  " + FormatUtc(body.issued_unix()) + "\n";
  out += "  expires: " + FormatUtc(body.expires_unix()) + "\n";
  if (!body.comment().empty()) out += "  comment: " + EscapeForLog(body.comment()) + "\n";
  DescribeGroup(out, "  root", body.root());
  for (int i = 0; i < body.publishers_size(); ++i) {
    const auto& rule = body.publishers(i);
    std::string repos;
    for (const auto& p : rule.repos()) repos += (repos.empty() ? "" : " ") + EscapeForLog(p, 80);
    DescribeGroup(out, "  publishers of " + repos, rule.signers());
  }
  DescribeGroup(out, "  heartbeat", body.heartbeat());
  for (const auto& reset : body.resets()) {
    out += "  serial reset: repo " + EscapeForLog(reset.repo(), 80) + " back to serial " +
           std::to_string(reset.floor()) + " where accepted under key sets older than version " +
           std::to_string(reset.since_version()) + "\n";
  }
  out += "  signatures: " + std::to_string(set.signed_set().signatures_size()) + "\n";
  for (const auto& sig : set.signed_set().signatures()) {
    out += "    by " + EscapeForLog(sig.key_id(), 64) + "\n";
  }
  return out;
}

}  // namespace mirrorcast
