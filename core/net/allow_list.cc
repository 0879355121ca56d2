#include "core/net/allow_list.h"

#include <vector>

#include "core/base/log.h"
#include "core/crypto/keys.h"
#include "core/net/curve.h"

namespace mirrorcast {
namespace {

constexpr size_t kMaxPeerNameBytes = 128;
constexpr size_t kMaxKeyFileNameBytes = 4096;

bool IsBlank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// The blank-separated fields of one line (at most `max` + 1: one more says
// "too many").
std::vector<std::string_view> Fields(std::string_view line, size_t max) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size() && out.size() <= max) {
    while (i < line.size() && IsBlank(line[i])) ++i;
    if (i >= line.size()) break;
    size_t end = i;
    while (end < line.size() && !IsBlank(line[end])) ++end;
    out.push_back(line.substr(i, end - i));
    i = end;
  }
  return out;
}

}  // namespace

std::string_view RoleName(PeerRole role) {
  switch (role) {
    case PeerRole::kPublish:
      return "publish";
    case PeerRole::kMirror:
      return "mirror";
    case PeerRole::kRelay:
      return "relay";
    case PeerRole::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::optional<PeerRole> ParseRole(std::string_view text) {
  for (PeerRole role :
       {PeerRole::kPublish, PeerRole::kMirror, PeerRole::kRelay, PeerRole::kAdmin}) {
    if (text == RoleName(role)) return role;
  }
  return std::nullopt;
}

bool ValidPeerName(std::string_view name) {
  if (name.empty() || name.size() > kMaxPeerNameBytes) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '@' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string ToUserId(const PeerIdentity& identity) {
  return std::string(RoleName(identity.role)) + " " + identity.name + " " + identity.public_z85;
}

std::optional<PeerIdentity> ParseUserId(std::string_view user_id) {
  const size_t first = user_id.find(' ');
  if (first == std::string_view::npos) return std::nullopt;
  const size_t second = user_id.find(' ', first + 1);
  if (second == std::string_view::npos) return std::nullopt;
  auto role = ParseRole(user_id.substr(0, first));
  const std::string_view name = user_id.substr(first + 1, second - first - 1);
  const std::string_view key = user_id.substr(second + 1);
  if (!role || !ValidPeerName(name) || !IsCurveKeyZ85(key)) return std::nullopt;
  return PeerIdentity{*role, std::string(name), std::string(key)};
}

Result<AllowList> AllowList::Parse(std::string_view text, std::string_view source,
                                   const std::filesystem::path& base_dir,
                                   const KeyFileReader& read_key_file) {
  if (text.size() > kMaxAllowListBytes) {
    return Status::InvalidArgument(std::string(source) + ": larger than " +
                                   std::to_string(kMaxAllowListBytes) + " bytes");
  }
  AllowList list;
  int line_number = 0;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(start, end - start);
    ++line_number;
    start = end + 1;
    auto fail = [&](const std::string& why) {
      return Status::InvalidArgument(std::string(source) + ":" + std::to_string(line_number) +
                                     ": " + why);
    };
    for (char c : line) {
      const auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t' && c != '\r') || u == 0x7f) {
        return fail("control character in the line");
      }
    }
    const std::vector<std::string_view> fields = Fields(line, 3);
    if (fields.empty() || fields[0].front() == '#') {
      if (end == text.size()) break;
      continue;
    }
    if (fields.size() != 3) {
      return fail("expected 'ROLE NAME PUBLIC-KEY-FILE-OR-Z85', got " +
                  std::to_string(fields.size()) + (fields.size() > 3 ? " or more" : "") +
                  " fields");
    }
    auto role = ParseRole(fields[0]);
    if (!role) {
      return fail("unknown role '" + EscapeForLog(fields[0], 32) +
                  "' (expected publish, mirror, relay or admin)");
    }
    if (!ValidPeerName(fields[1])) {
      return fail("bad name '" + EscapeForLog(fields[1], 64) +
                  "': 1 to 128 characters of A-Z a-z 0-9 . _ : @ -");
    }
    std::string key;
    if (IsCurveKeyZ85(fields[2])) {
      key = std::string(fields[2]);
    } else {
      if (fields[2].size() > kMaxKeyFileNameBytes) return fail("key file name too long");
      std::filesystem::path file{std::string(fields[2])};
      if (file.is_relative()) file = base_dir / file;
      if (!read_key_file) return fail("key files cannot be read here");
      auto loaded = read_key_file(file);
      if (!loaded.ok()) {
        return fail("key '" + EscapeForLog(fields[2], 128) +
                    "' is neither 40 Z85 characters nor a readable CURVE public key file: " +
                    loaded.status().message());
      }
      key = std::move(loaded).value();
      if (!IsCurveKeyZ85(key)) return fail("key file did not give a CURVE public key");
    }
    if (auto it = list.by_key_.find(key); it != list.by_key_.end()) {
      return fail("this key is already listed on line " + std::to_string(it->second.line) +
                  " (a key has one role and one name)");
    }
    if (list.by_key_.size() >= kMaxAllowListEntries) {
      return fail("more than " + std::to_string(kMaxAllowListEntries) + " entries");
    }
    Entry entry{PeerIdentity{*role, std::string(fields[1]), key}, line_number};
    list.roles_by_name_[entry.identity.name] |= 1u << static_cast<unsigned>(entry.identity.role);
    list.by_key_.emplace(std::move(key), std::move(entry));
    if (end == text.size()) break;
  }
  return list;
}

Result<AllowList> AllowList::LoadFile(const std::filesystem::path& path) {
  MC_ASSIGN_OR_RETURN(std::string text, ReadProtectedFile(path, KeyFileKind::kPublic,
                                                          kMaxAllowListBytes, "allow-list"));
  std::filesystem::path base = path.parent_path();
  if (base.empty()) base = ".";
  return Parse(text, path.string(), base,
               [](const std::filesystem::path& file) { return LoadCurvePublicFile(file); });
}

const AllowList::Entry* AllowList::Find(std::string_view public_z85) const {
  auto it = by_key_.find(public_z85);
  return it == by_key_.end() ? nullptr : &it->second;
}

bool AllowList::NameHasRole(std::string_view name, PeerRole role) const {
  auto it = roles_by_name_.find(name);
  return it != roles_by_name_.end() && (it->second & (1u << static_cast<unsigned>(role))) != 0;
}

size_t AllowList::CountRole(PeerRole role) const {
  size_t n = 0;
  for (const auto& [key, entry] : by_key_) n += entry.identity.role == role ? 1 : 0;
  return n;
}

CurrentAllowList::CurrentAllowList(std::shared_ptr<const AllowList> list,
                                   std::filesystem::path source)
    : source_(std::move(source)), list_(std::move(list)) {}

std::shared_ptr<const AllowList> CurrentAllowList::Get() const {
  std::lock_guard<std::mutex> lock(mu_);
  return list_;
}

void CurrentAllowList::Replace(std::shared_ptr<const AllowList> list) {
  std::lock_guard<std::mutex> lock(mu_);
  list_ = std::move(list);
}

std::optional<PeerIdentity> CurrentAllowList::Check(std::string_view user_id) const {
  auto identity = ParseUserId(user_id);
  if (!identity) return std::nullopt;
  const std::shared_ptr<const AllowList> list = Get();
  const AllowList::Entry* entry = list ? list->Find(identity->public_z85) : nullptr;
  if (entry == nullptr || entry->identity.role != identity->role ||
      entry->identity.name != identity->name) {
    return std::nullopt;
  }
  return identity;
}

bool RoleMayControl(PeerRole role, ControlAction action) {
  switch (role) {
    case PeerRole::kPublish:
      // Publish and recall (which reads the target's event), uploads, the
      // links a publish made.
      return action == ControlAction::kHello || action == ControlAction::kPublish ||
             action == ControlAction::kPutObjects || action == ControlAction::kLinked ||
             action == ControlAction::kEvents;
    case PeerRole::kMirror:
      // Follow and report; never publish, and no view of the other mirrors.
      return action == ControlAction::kHello || action == ControlAction::kEvents ||
             action == ControlAction::kAck;
    case PeerRole::kRelay:
      // A mirror that also reports for the mirrors behind it; never publishes.
      return action == ControlAction::kHello || action == ControlAction::kEvents ||
             action == ControlAction::kAck || action == ControlAction::kRelayAcks;
    case PeerRole::kAdmin:
      return action == ControlAction::kHello || action == ControlAction::kStatus;
  }
  return false;
}

bool RoleMayConnect(PeerRole role, std::string_view zap_domain) {
  if (zap_domain == kZapDomainControl) return true;
  if (zap_domain == kZapDomainEvents) return role == PeerRole::kMirror || role == PeerRole::kRelay;
  if (zap_domain == kZapDomainContent) return role != PeerRole::kAdmin;
  return false;
}

}  // namespace mirrorcast
