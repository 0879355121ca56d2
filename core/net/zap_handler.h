// The broker's ZAP handler (ZeroMQ RFC 27): decides every CURVE handshake on
// the broker's server sockets against the allow-list in force.
//
// A REP socket bound at inproc://zeromq.zap.01 in the broker's context, on
// its own thread (RunGuarded). For each request: the mechanism must be CURVE
// with one 32-byte client key; the key must be on the allow-list, and its
// role allowed on the socket's ZAP domain (RoleMayConnect). Accepted: status
// 200 and User-Id "ROLE NAME KEY" (allow_list.h), which libzmq attaches to
// every message of that connection. Refused: status 400; a key not on the
// list is logged once per key, a role refused on a socket once per key and
// socket, never once per attempt (a client retries its handshake every few
// seconds).
//
// Command protocol: Start() binds and returns once the thread serves (the
// broker starts it before binding any server socket, so no handshake ever
// finds no handler); Stop() is synchronous and idempotent and must come
// after the server sockets are closed. If the thread ends on an error,
// failed() turns true and the broker stops.
#pragma once

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "core/base/status.h"
#include "core/net/allow_list.h"

namespace mirrorcast {

class ZapHandler {
 public:
  // `context` and `allow` are not owned and outlive the handler.
  ZapHandler(zmq::context_t& context, const CurrentAllowList& allow);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  Status Start();
  void Stop();
  bool failed() const { return failed_; }

 private:
  Status Loop(zmq::socket_t& socket);
  // The reply frames' status code, text and User-Id for one request.
  struct Decision {
    std::string code;
    std::string text;
    std::string user_id;
  };
  Decision Decide(const std::vector<zmq::message_t>& request);
  void LogOnce(const std::string& key, const std::string& line);

  zmq::context_t& context_;
  const CurrentAllowList& allow_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::set<std::string> logged_;  // the ZAP thread only; bounded
};

}  // namespace mirrorcast
