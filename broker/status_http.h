// The broker's status page on --http HOST:PORT (cpp-httplib, Debian's
// libcpp-httplib-dev): read-only GETs of
//   /              the HTML page (status_page.h)
//   /status.json   the same as JSON
//   /metrics       the Prometheus text exposition format
//   /healthz       "ok" while the broker serves
// Anything else is 404; any other method 405. The pages are made from the
// newest snapshot the broker's control thread handed over (at most about a
// second old), so a page never waits on, or locks, the control thread.
//
// The listener is unauthenticated, like any status page: it shows mirror
// names and serials, never keys or content. Bind it to loopback or a
// monitoring network, or put it behind the web server that serves the tree.
// Peers are bounded: a few worker threads, short read/write timeouts, no
// request bodies, a cap on keep-alive requests per connection.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "core/base/status.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace httplib {
class Server;
}

namespace mirrorcast {

class StatusHttpServer {
 public:
  // `snapshot` is called on the server's threads; it must be thread-safe
  // and return quickly (nullptr: the broker is not ready: 503).
  using Snapshot = std::function<std::shared_ptr<const v1::StatusReply>()>;

  StatusHttpServer(HostPort listen, Snapshot snapshot);
  ~StatusHttpServer();

  // Binds (port 0: any free port) and starts serving; returns once bound.
  Status Start();
  // Stops serving and joins; idempotent.
  void Stop();
  uint16_t port() const { return port_; }

 private:
  HostPort listen_;
  Snapshot snapshot_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  uint16_t port_ = 0;
};

}  // namespace mirrorcast
