// Broker addresses ("HOST:PORT", "[::1]:PORT") and ZeroMQ endpoint strings.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <zmq.hpp>

#include "core/base/status.h"

namespace mirrorcast {

struct HostPort {
  std::string host;  // name, IPv4 literal or IPv6 literal (without brackets); "*" binds all
  uint16_t port = 0;

  bool is_ipv6() const { return host.find(':') != std::string::npos; }
  // "tcp://host:port" ("tcp://[::1]:port" for IPv6).
  std::string Endpoint() const;
  // The same host with another port.
  HostPort WithPort(uint16_t other) const { return HostPort{host, other}; }
  // "host:port" ("[::1]:port").
  std::string ToString() const;
};

// Accepts "host:port" and "[v6]:port"; port 0 is allowed (bind to any free port).
Result<HostPort> ParseHostPort(std::string_view text);

// The TCP port a socket is bound to (after binding to port 0), from ZMQ_LAST_ENDPOINT.
Result<uint16_t> BoundPort(zmq::socket_t& socket);

// Options every mirrorcast socket gets: linger bounded, IPv6 when the host is
// a v6 literal, a maximum inbound message size (untrusted peers), TCP keepalive.
void ConfigureSocket(zmq::socket_t& socket, const HostPort& address, int64_t max_message_bytes);

}  // namespace mirrorcast
