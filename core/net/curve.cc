#include "core/net/curve.h"

#include <openssl/crypto.h>
#include <zmq.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "core/crypto/keys.h"

namespace mirrorcast {
namespace {

constexpr std::string_view kSecretPrefix = "mirrorcast-curve-secret-v1";
constexpr std::string_view kPublicPrefix = "mirrorcast-curve-public-v1";
constexpr size_t kMaxCurveKeyFileBytes = 1024;
// ZMQ_ZAP_ENFORCE_DOMAIN: in zmq.h only under ZMQ_BUILD_DRAFT_API.
constexpr int kZapEnforceDomainOption = 93;

// "<prefix> <40 Z85 chars>" (ParseKeyFileLine) with a valid key.
Result<std::string> ParseCurveKeyText(std::string_view text, std::string_view prefix,
                                      const std::filesystem::path& path) {
  const std::string expected =
      "expected one line '" + std::string(prefix) + " <40 Z85 chars>' (mirrorcast keygen --curve)";
  MC_ASSIGN_OR_RETURN(std::string key,
                      ParseKeyFileLine(text, prefix, kCurveKeyZ85Chars, path, expected));
  if (!IsCurveKeyZ85(key)) {
    WipeSecret(key);
    return Status::InvalidArgument(path.string() + ": malformed CURVE key (" + expected + ")");
  }
  return key;
}

std::string MonitorEndpoint() {
  static std::atomic<uint64_t> next{1};
  return "inproc://mirrorcast-handshake-watch-" + std::to_string(next.fetch_add(1));
}

}  // namespace

bool IsCurveKeyZ85(std::string_view text) {
  if (text.size() != kCurveKeyZ85Chars) return false;
  const std::string copy(text);  // zmq_z85_decode wants a NUL-terminated string
  uint8_t raw[32];
  const bool ok = zmq_z85_decode(raw, copy.c_str()) != nullptr;
  OPENSSL_cleanse(raw, sizeof raw);
  return ok;
}

Result<CurveKeyPair> GenerateCurveKeyPair() {
  char pub[kCurveKeyZ85Chars + 1] = {};
  char sec[kCurveKeyZ85Chars + 1] = {};
  if (zmq_curve_keypair(pub, sec) != 0) {
    return Status::Internal(std::string("cannot make a CURVE key pair: ") +
                            zmq_strerror(zmq_errno()) + " (libzmq built without CURVE?)");
  }
  CurveKeyPair keys{pub, sec};
  OPENSSL_cleanse(sec, sizeof sec);
  return keys;
}

std::string CurvePublicFileText(std::string_view public_z85) {
  return std::string(kPublicPrefix) + " " + std::string(public_z85) + "\n";
}

Status SaveCurveKeyFiles(const CurveKeyPair& keys, const std::string& prefix) {
  if (prefix.empty()) return Status::InvalidArgument("empty key file prefix");
  std::string secret_text = std::string(kSecretPrefix) + " " + keys.secret_z85 + "\n";
  Status st = SaveKeyPairFiles(prefix + ".curve.key", secret_text, prefix + ".curve.pub",
                               CurvePublicFileText(keys.public_z85));
  WipeSecret(secret_text);
  return st;
}

Result<CurveKeyPair> LoadCurveSecretFile(const std::filesystem::path& path) {
  MC_ASSIGN_OR_RETURN(std::string text, ReadProtectedFile(path, KeyFileKind::kSecret,
                                                          kMaxCurveKeyFileBytes, "CURVE key file"));
  auto secret = ParseCurveKeyText(text, kSecretPrefix, path);
  WipeSecret(text);
  if (!secret.ok()) return secret.status();
  char pub[kCurveKeyZ85Chars + 1] = {};
  if (zmq_curve_public(pub, secret->c_str()) != 0) {
    WipeSecret(*secret);
    return Status::InvalidArgument(path.string() + ": cannot derive the CURVE public key");
  }
  CurveKeyPair keys{pub, std::move(secret).value()};
  return keys;
}

Result<std::string> LoadCurvePublicFile(const std::filesystem::path& path) {
  MC_ASSIGN_OR_RETURN(std::string text, ReadProtectedFile(path, KeyFileKind::kPublic,
                                                          kMaxCurveKeyFileBytes, "CURVE key file"));
  return ParseCurveKeyText(text, kPublicPrefix, path);
}

void SecureClientSocket(zmq::socket_t& socket, const ClientTransport& transport) {
  if (!transport) return;
  socket.set(zmq::sockopt::curve_serverkey, transport->broker_public_z85);
  socket.set(zmq::sockopt::curve_publickey, transport->own.public_z85);
  socket.set(zmq::sockopt::curve_secretkey, transport->own.secret_z85);
}

bool SecureServerSocket(zmq::socket_t& socket, const std::optional<CurveKeyPair>& server,
                        std::string_view zap_domain) {
  if (!server) return false;
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, server->secret_z85);
  socket.set(zmq::sockopt::zap_domain, std::string(zap_domain));
  const int one = 1;
  return zmq_setsockopt(socket.handle(), kZapEnforceDomainOption, &one, sizeof one) == 0;
}

HandshakeWatch::HandshakeWatch(zmq::context_t& context, zmq::socket_t& watched)
    : watched_(watched), pair_(context, zmq::socket_type::pair), endpoint_(MonitorEndpoint()) {
  const int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  if (zmq_socket_monitor(watched_.handle(), endpoint_.c_str(), events) == 0) {
    pair_.set(zmq::sockopt::linger, 0);
    pair_.connect(endpoint_);
  } else {
    endpoint_.clear();  // no diagnosis, nothing else lost
  }
}

HandshakeWatch::~HandshakeWatch() {
  if (!endpoint_.empty()) zmq_socket_monitor(watched_.handle(), nullptr, 0);
}

std::string HandshakeWatch::LastFailure() {
  if (endpoint_.empty()) return last_failure_;
  for (int i = 0; i < 1000; ++i) {
    zmq::message_t head;
    if (!pair_.recv(head, zmq::recv_flags::dontwait)) break;
    zmq::message_t address;
    if (head.more()) (void)pair_.recv(address, zmq::recv_flags::dontwait);
    if (head.size() < 6) continue;
    uint16_t event = 0;
    uint32_t value = 0;
    std::memcpy(&event, head.data(), sizeof event);
    std::memcpy(&value, static_cast<const char*>(head.data()) + 2, sizeof value);
    const std::string hint =
        ": check --curve-key (this client's secret key, listed in the broker's --allow file) "
        "and --broker-key (the broker's public key), or run both sides with "
        "--insecure-plaintext in a lab";
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
      last_failure_ =
          "the broker refused this client's key (ZAP status " + std::to_string(value) + ")" + hint;
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
               value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
      last_failure_ = "the broker uses another transport security (CURVE against plain TCP)" + hint;
    } else {
      last_failure_ = "the security handshake with the broker failed" + hint;
    }
  }
  return last_failure_;
}

}  // namespace mirrorcast
