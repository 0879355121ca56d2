// Protobuf messages over ZeroMQ frames. Parsing never trusts the peer:
// size-limited, and a parse failure is a Status, never a crash.
#pragma once

#include <google/protobuf/message_lite.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include <zmq.hpp>

#include "core/base/status.h"

namespace mirrorcast {

zmq::message_t ToFrame(const google::protobuf::MessageLite& message);

// Parses one frame into `out`; Rejected if it is larger than `max_bytes` or malformed.
Status ParseFrame(const zmq::message_t& frame, size_t max_bytes,
                  google::protobuf::MessageLite* out);

// Who sent a message received on a ROUTER (`frames` as ReceiveMultipart
// returned them): the key per-peer limits are counted under. With CURVE the
// ZAP User-Id (role, name and public key, core/net/allow_list.h) prefixed
// "k:", so reconnecting gives no fresh budget; on plain TCP the
// connection's routing id. Opaque bytes: log through PeerForLog.
std::string PeerOf(const std::vector<zmq::message_t>& frames);
// The ZAP User-Id libzmq attached to a received frame (CURVE), nullopt
// without one (plain TCP).
std::optional<std::string> UserIdOf(const zmq::message_t& frame);
// A PeerOf() value for a log line: the User-Id escaped, or a routing id in
// hex (capped).
std::string PeerForLog(std::string_view peer);

// The top level of a request frame, read without parsing any submessage:
// enough to refuse a frame before it costs a parse. `body_field` is the
// number of the last length-delimited field (the one a oneof body keeps),
// 0 when there is none.
struct RequestPeek {
  uint32_t protocol_version = 0;
  uint64_t request_id = 0;
  uint32_t body_field = 0;
  size_t body_bytes = 0;
  int length_delimited_fields = 0;
};
// Rejected for a frame that is not a protobuf message at its top level, or
// that has more than `max_fields` top-level fields (ours have four).
Result<RequestPeek> PeekRequest(const zmq::message_t& frame, int max_fields = 16);

// Receives all frames of one message without blocking; empty when none waits.
std::vector<zmq::message_t> ReceiveMultipart(zmq::socket_t& socket);

// Sends frames as one message without blocking. False if the socket would
// block (peer gone or over its high-water mark): the message is dropped, by
// design, so one slow peer never stalls the sender.
bool SendMultipartNoWait(zmq::socket_t& socket, std::vector<zmq::message_t>& frames);

}  // namespace mirrorcast
