// Client side of a broker's control socket (DEALER -> ROUTER).
//
// One request at a time; each carries an id and the reply with that id is
// awaited with a deadline. Replies to earlier, timed-out requests are dropped.
// Owns its socket: one thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <zmq.hpp>

#include "core/base/status.h"
#include "core/net/curve.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

class ControlClient {
 public:
  // `transport`: CURVE keys (SecureClientSocket), nullopt for plain TCP.
  ControlClient(zmq::context_t& context, HostPort broker, ClientTransport transport = std::nullopt);

  // Sends `request` (protocol_version and request_id are set here) and waits
  // up to `timeout` for the matching reply. A reply with ok=false becomes a
  // Status carrying the broker's error text (Rejected). A broker that cannot
  // be reached is Unavailable, naming a failed security handshake (refused
  // key, CURVE against plain TCP) when there was one.
  Result<v1::ControlReply> Call(v1::ControlRequest request, std::chrono::milliseconds timeout);

  // Convenience wrappers.
  Result<v1::HelloReply> Hello(const std::string& client, std::chrono::milliseconds timeout);
  // A Hello with more than the client text (a mirror's poll: mirror_id, repo,
  // serial, instance).
  Result<v1::HelloReply> Hello(const v1::HelloRequest& hello, std::chrono::milliseconds timeout);
  Result<v1::EventsReply> Events(const std::string& repo, uint64_t since_serial,
                                 uint32_t max_events, std::chrono::milliseconds timeout);
  Status SendAck(const v1::Ack& ack, std::chrono::milliseconds timeout);
  Result<v1::StatusReply> GetStatus(std::chrono::milliseconds timeout);
  // A relay's forwarded ACKs; how many the broker recorded.
  Result<uint32_t> RelayAcks(const v1::RelayAcksRequest& acks, std::chrono::milliseconds timeout);
  // Uploads a signed key set; the broker's key-set version afterwards.
  Result<uint64_t> PublishKeySet(const std::string& signed_key_set,
                                 std::chrono::milliseconds timeout);

  const HostPort& broker() const { return broker_; }

 private:
  HostPort broker_;
  zmq::socket_t socket_;
  // Says why a broker is "not reachable" when a handshake failed; destroyed
  // before socket_.
  HandshakeWatch watch_;
  uint64_t next_request_id_ = 1;
};

}  // namespace mirrorcast
