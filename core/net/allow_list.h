// The broker's allow-list: which CURVE keys may connect, in which role and
// under which name (docs/operations.md, "Allow-list").
//
// File format, one entry per line:
//   ROLE NAME PUBLIC-KEY-FILE-OR-Z85
// ROLE is publish, mirror, relay or admin; NAME is 1-128 characters of
// [A-Za-z0-9._:@-] (a mirror's NAME is the only mirror id its key may ACK
// as); the key is either exactly 40 Z85 characters or the name of a
// PREFIX.curve.pub file (relative names are relative to the allow-list's
// directory). Fields are separated by blanks; a line whose first non-blank
// character is '#' is a comment (Z85 uses '#', so there are no trailing
// comments); blank lines are ignored. A key may appear once; a name may
// appear with several keys (rotation: list the new key beside the old).
// Any other line is an error naming its line number; nothing of a file with
// an error is used.
//
// An AllowList is immutable and safe to share between threads; reloads make
// a new one (the ZAP handler swaps it).
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

enum class PeerRole { kPublish, kMirror, kRelay, kAdmin };

std::string_view RoleName(PeerRole role);
std::optional<PeerRole> ParseRole(std::string_view text);

// What the ZAP handler says about a connection, and what the broker reads
// back from each message ("User-Id" = "ROLE NAME KEY", the key in Z85: the
// broker checks per request that the key is still listed so, and counts a
// peer's limits under it, so a reconnect gains no fresh budget).
struct PeerIdentity {
  PeerRole role = PeerRole::kMirror;
  std::string name;
  std::string public_z85;
};
std::string ToUserId(const PeerIdentity& identity);
// nullopt for anything that is not "ROLE NAME KEY" with a valid role, name
// and key.
std::optional<PeerIdentity> ParseUserId(std::string_view user_id);

// 1-128 characters of [A-Za-z0-9._:@-].
bool ValidPeerName(std::string_view name);

inline constexpr size_t kMaxAllowListBytes = 4u << 20;
inline constexpr size_t kMaxAllowListEntries = 100000;

class AllowList {
 public:
  struct Entry {
    PeerIdentity identity;  // its public_z85 is the key listed
    int line = 0;
  };
  // Reads a key file named in the list (LoadCurvePublicFile in LoadFile;
  // tests and the fuzzer pass their own).
  using KeyFileReader = std::function<Result<std::string>(const std::filesystem::path&)>;

  // Parses `text`; errors are InvalidArgument "SOURCE:LINE: ...". Relative
  // key file names are resolved against `base_dir`.
  static Result<AllowList> Parse(std::string_view text, std::string_view source,
                                 const std::filesystem::path& base_dir,
                                 const KeyFileReader& read_key_file);
  // Reads and parses a file, refusing one others could write (as a trust
  // file, ReadProtectedFile), and reads its key files the same way.
  static Result<AllowList> LoadFile(const std::filesystem::path& path);

  // The entry of a 40-character Z85 key, nullptr when it is not listed.
  const Entry* Find(std::string_view public_z85) const;
  // Whether some key is listed under `name` with `role`.
  bool NameHasRole(std::string_view name, PeerRole role) const;
  size_t size() const { return by_key_.size(); }
  // Entries per role, for the start-up log line.
  size_t CountRole(PeerRole role) const;

 private:
  std::map<std::string, Entry, std::less<>> by_key_;
  std::map<std::string, unsigned, std::less<>> roles_by_name_;  // bit per PeerRole
};

// The allow-list in force, replaced whole on a reload (SIGHUP). Read by the
// ZAP handler's thread for each handshake and by the broker's control and
// content threads for each request. Thread-safe.
class CurrentAllowList {
 public:
  CurrentAllowList(std::shared_ptr<const AllowList> list, std::filesystem::path source);
  std::shared_ptr<const AllowList> Get() const;
  void Replace(std::shared_ptr<const AllowList> list);
  const std::filesystem::path& source() const { return source_; }
  // The identity `user_id` (a ZAP User-Id) names, if its key is still
  // listed with that role and name; nullopt otherwise (removed or changed
  // since its handshake, or not a User-Id of ours).
  std::optional<PeerIdentity> Check(std::string_view user_id) const;

 private:
  const std::filesystem::path source_;
  mutable std::mutex mu_;
  std::shared_ptr<const AllowList> list_;  // guarded by mu_
};

// Which requests each role may make on the control socket. Plain TCP
// (--insecure-plaintext) has no roles and checks nothing.
enum class ControlAction {
  kHello,
  kPublish,
  kPutObjects,
  kLinked,
  kEvents,
  kAck,
  kStatus,
  kRelayAcks,  // ACKs of the mirrors behind a relay
};
bool RoleMayControl(PeerRole role, ControlAction action);
// Which roles the ZAP handler lets connect to a server socket's domain
// (core/net/curve.h): control any role, events mirror and relay, content
// publish, mirror and relay. false for an unknown domain.
bool RoleMayConnect(PeerRole role, std::string_view zap_domain);

}  // namespace mirrorcast
