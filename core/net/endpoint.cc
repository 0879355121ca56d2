#include "core/net/endpoint.h"

#include <charconv>

namespace mirrorcast {

std::string HostPort::ToString() const {
  if (is_ipv6()) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string HostPort::Endpoint() const { return "tcp://" + ToString(); }

Result<HostPort> ParseHostPort(std::string_view text) {
  HostPort out;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return Status::InvalidArgument("bad address '" + std::string(text) +
                                     "': expected [IPv6]:PORT");
    }
    out.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
      return Status::InvalidArgument("bad address '" + std::string(text) + "': expected HOST:PORT");
    }
    out.host = std::string(text.substr(0, colon));
    if (out.host.find(':') != std::string::npos) {
      return Status::InvalidArgument("bad address '" + std::string(text) +
                                     "': write IPv6 addresses as [ADDR]:PORT");
    }
    port_text = text.substr(colon + 1);
  }
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || value > 65535 ||
      port_text.empty()) {
    return Status::InvalidArgument("bad port in '" + std::string(text) + "'");
  }
  if (out.host.empty()) return Status::InvalidArgument("empty host in '" + std::string(text) + "'");
  out.port = static_cast<uint16_t>(value);
  return out;
}

Result<uint16_t> BoundPort(zmq::socket_t& socket) {
  std::string last = socket.get(zmq::sockopt::last_endpoint);
  size_t colon = last.rfind(':');
  if (colon == std::string::npos) return Status::Internal("no bound endpoint: " + last);
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(last.data() + colon + 1, last.data() + last.size(), value);
  if (ec != std::errc() || value == 0 || value > 65535) {
    return Status::Internal("cannot read port from " + last);
  }
  return static_cast<uint16_t>(value);
}

void ConfigureSocket(zmq::socket_t& socket, const HostPort& address, int64_t max_message_bytes) {
  socket.set(zmq::sockopt::linger, 0);
  if (address.is_ipv6()) socket.set(zmq::sockopt::ipv6, 1);
  socket.set(zmq::sockopt::maxmsgsize, max_message_bytes);
  socket.set(zmq::sockopt::tcp_keepalive, 1);
  socket.set(zmq::sockopt::tcp_keepalive_idle, 60);
  socket.set(zmq::sockopt::tcp_keepalive_intvl, 10);
}

}  // namespace mirrorcast
