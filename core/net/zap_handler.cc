#include "core/net/zap_handler.h"

#include <zmq.h>

#include <chrono>
#include <future>
#include <memory>

#include "core/base/log.h"
#include "core/base/thread_guard.h"
#include "core/net/curve.h"
#include "core/net/messages.h"

namespace mirrorcast {
namespace {

constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
constexpr size_t kMaxLogged = 4096;  // distinct keys (and key, socket) logged

std::string SocketName(std::string_view domain) {
  if (domain == kZapDomainControl) return "control";
  if (domain == kZapDomainEvents) return "events";
  if (domain == kZapDomainContent) return "content";
  return "unknown (" + EscapeForLog(domain, 64) + ")";
}

}  // namespace

ZapHandler::ZapHandler(zmq::context_t& context, const CurrentAllowList& allow)
    : context_(context), allow_(allow) {}

ZapHandler::~ZapHandler() { Stop(); }

Status ZapHandler::Start() {
  if (thread_.joinable()) return Status::Ok();
  stop_ = false;
  failed_ = false;
  // Shared with the thread, which may still be inside set_value when the
  // caller returns.
  auto bound = std::make_shared<std::promise<Status>>();
  std::future<Status> ready = bound->get_future();
  thread_ = std::thread([this, bound] {
    bool signalled = false;
    Status s = RunGuarded("zap", [&]() -> Status {
      zmq::socket_t socket(context_, zmq::socket_type::rep);
      socket.set(zmq::sockopt::linger, 0);
      try {
        socket.bind(kZapEndpoint);
      } catch (const zmq::error_t& e) {
        return Status::Unavailable(std::string("bind ") + kZapEndpoint + ": " + e.what());
      }
      signalled = true;
      bound->set_value(Status::Ok());
      return Loop(socket);
    });
    if (!signalled) {
      bound->set_value(s.ok() ? Status::Internal("zap thread ended before serving") : s);
      return;
    }
    if (!s.ok() || !stop_) {
      MC_LOG(fatal) << "ZAP handler ended: " << (s.ok() ? "unasked" : s.ToString());
      failed_ = true;
    }
  });
  Status started = ready.get();
  if (!started.ok()) {
    thread_.join();
    return started;
  }
  return Status::Ok();
}

void ZapHandler::Stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  thread_.join();
}

Status ZapHandler::Loop(zmq::socket_t& socket) {
  while (!stop_) {
    zmq::pollitem_t item{static_cast<void*>(socket), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, std::chrono::milliseconds(200));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return Status::Internal(std::string("zap poll failed: ") + e.what());
    }
    if (!(item.revents & ZMQ_POLLIN)) continue;
    for (int i = 0; i < 1000; ++i) {
      std::vector<zmq::message_t> request = ReceiveMultipart(socket);
      if (request.empty()) break;
      Decision d = Decide(request);
      std::vector<zmq::message_t> reply;
      reply.emplace_back("1.0", 3);
      if (request.size() > 1) {
        reply.emplace_back(request[1].data(), request[1].size());
      } else {
        reply.emplace_back();
      }
      reply.emplace_back(d.code.data(), d.code.size());
      reply.emplace_back(d.text.data(), d.text.size());
      reply.emplace_back(d.user_id.data(), d.user_id.size());
      reply.emplace_back();  // no metadata
      // libzmq reads its ZAP pipe at once; a reply that cannot go out is
      // a handshake that times out, never a stalled handler.
      (void)SendMultipartNoWait(socket, reply);
    }
  }
  return Status::Ok();
}

void ZapHandler::LogOnce(const std::string& key, const std::string& line) {
  if (logged_.count(key) != 0) return;
  if (logged_.size() >= kMaxLogged) {
    if (logged_.size() == kMaxLogged) {
      MC_LOG(warning) << "ZAP: more than " << kMaxLogged
                      << " refused keys logged; further refusals are not logged";
      logged_.insert(std::string());  // marks the note as written
    }
    return;
  }
  logged_.insert(key);
  MC_LOG(warning) << line;
}

ZapHandler::Decision ZapHandler::Decide(const std::vector<zmq::message_t>& request) {
  // Frames (RFC 27): version, request id, domain, address, routing id,
  // mechanism, credentials. libzmq writes them, but the key in them is the
  // peer's.
  if (request.size() < 6 || request[0].to_string_view() != "1.0") {
    return {"500", "malformed ZAP request", ""};
  }
  const std::string domain = request[2].to_string();
  const std::string address = EscapeForLog(request[3].to_string_view(), 64);
  if (request[5].to_string_view() != "CURVE" || request.size() != 7 || request[6].size() != 32) {
    LogOnce("mechanism\n" + domain, "ZAP: refused a connection from " + address + " to the " +
                                        SocketName(domain) +
                                        " socket that does not use CURVE (logged once per socket)");
    return {"400", "CURVE required", ""};
  }
  char z85[kCurveKeyZ85Chars + 1] = {};
  if (zmq_z85_encode(z85, static_cast<const uint8_t*>(request[6].data()), 32) == nullptr) {
    return {"500", "cannot encode the key", ""};
  }
  const std::string key(z85);
  const std::shared_ptr<const AllowList> list = allow_.Get();
  const AllowList::Entry* entry = list ? list->Find(key) : nullptr;
  if (entry == nullptr) {
    LogOnce(key, "ZAP: refused CURVE key " + key + " from " + address + " on the " +
                     SocketName(domain) + " socket: not on the allow-list " +
                     allow_.source().string() + " (logged once per key)");
    return {"400", "key not on the allow-list", ""};
  }
  if (!RoleMayConnect(entry->identity.role, domain)) {
    LogOnce(key + "\n" + domain,
            "ZAP: refused CURVE key " + key + " (" + std::string(RoleName(entry->identity.role)) +
                " " + entry->identity.name + ") on the " + SocketName(domain) + " socket: role " +
                std::string(RoleName(entry->identity.role)) +
                " may not connect there (logged once per key and socket)");
    return {"400", "role not allowed on this socket", ""};
  }
  return {"200", "OK", ToUserId(entry->identity)};
}

}  // namespace mirrorcast
