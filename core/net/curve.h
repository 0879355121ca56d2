// CURVE transport security (ZeroMQ's CurveZMQ: Curve25519 keys, Z85 text).
//
// Key files, one line each (docs/operations.md, "Transport keys"):
//   PREFIX.curve.key  "mirrorcast-curve-secret-v1 <40 Z85 chars>\n"   mode 0600
//   PREFIX.curve.pub  "mirrorcast-curve-public-v1 <40 Z85 chars>\n"
// Both are read through ReadProtectedFile (core/crypto/keys.h): a file or a
// directory on the way to it that someone else can write is refused, and a
// secret file readable by group or others.
//
// Every socket that crosses the network goes through SecureServerSocket (the
// broker's ROUTERs and XPUB) or SecureClientSocket (DEALERs, SUB); the
// inproc sockets inside a process stay plain. A std::nullopt transport is
// plain TCP, allowed only with --insecure-plaintext (core/cli/transport.h).
// All functions are thread-safe; a socket is configured by its owning thread.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <zmq.hpp>

#include "core/base/status.h"

namespace mirrorcast {

inline constexpr size_t kCurveKeyZ85Chars = 40;  // 32 bytes in Z85

struct CurveKeyPair {
  std::string public_z85;  // kCurveKeyZ85Chars
  std::string secret_z85;  // kCurveKeyZ85Chars; never logged
};

// True for exactly 40 Z85 characters that decode to 32 bytes.
bool IsCurveKeyZ85(std::string_view text);

// A fresh key pair (libsodium through zmq_curve_keypair).
Result<CurveKeyPair> GenerateCurveKeyPair();
// Writes PREFIX.curve.key (0600) and PREFIX.curve.pub, both created
// exclusively (never overwrites; no lone secret left on failure), and syncs
// their directory.
Status SaveCurveKeyFiles(const CurveKeyPair& keys, const std::string& prefix);
// A secret key file; the public half is derived from it.
Result<CurveKeyPair> LoadCurveSecretFile(const std::filesystem::path& path);
// A public key file; returns the Z85 key.
Result<std::string> LoadCurvePublicFile(const std::filesystem::path& path);
// The text of the public key file for `public_z85`.
std::string CurvePublicFileText(std::string_view public_z85);

// What a client socket needs: its own key pair and the broker's public key.
struct ClientCurve {
  CurveKeyPair own;
  std::string broker_public_z85;
};
// nullopt: plain TCP (--insecure-plaintext).
using ClientTransport = std::optional<ClientCurve>;

// The ZAP domains of the broker's server sockets; the ZAP handler decides
// per domain which roles may connect (core/net/allow_list.h).
inline constexpr std::string_view kZapDomainControl = "mirrorcast-control";
inline constexpr std::string_view kZapDomainEvents = "mirrorcast-events";
inline constexpr std::string_view kZapDomainContent = "mirrorcast-content";

// Makes `socket` a CURVE client of the broker (before connect). No-op for
// nullopt.
void SecureClientSocket(zmq::socket_t& socket, const ClientTransport& transport);

// Makes `socket` a CURVE server with `zap_domain` (before bind), and sets
// ZMQ_ZAP_ENFORCE_DOMAIN (by number: zmq.h declares it for draft builds
// only; Debian 12's libzmq 4.3.4 accepts it). Returns whether the option
// was set; if not, the broker keeps its ZAP handler bound for as long as any
// server socket is, which is what the option guards against. No-op (false)
// for nullopt.
bool SecureServerSocket(zmq::socket_t& socket, const std::optional<CurveKeyPair>& server,
                        std::string_view zap_domain);

// Watches a client socket's handshakes (a ZeroMQ socket monitor on an
// inproc PAIR) so that "not reachable" can say why: a broker that refused
// this client's key, or one that speaks another security mechanism. Owned
// by the thread that owns the watched socket; must be destroyed before it.
class HandshakeWatch {
 public:
  HandshakeWatch(zmq::context_t& context, zmq::socket_t& watched);
  ~HandshakeWatch();
  HandshakeWatch(const HandshakeWatch&) = delete;
  HandshakeWatch& operator=(const HandshakeWatch&) = delete;

  // Reads the events so far; the last failed handshake as a sentence for a
  // human (what failed and which flags to check), empty when none failed.
  std::string LastFailure();

 private:
  zmq::socket_t& watched_;
  zmq::socket_t pair_;
  std::string endpoint_;
  std::string last_failure_;
};

}  // namespace mirrorcast
