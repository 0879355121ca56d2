// Protobuf messages over ZeroMQ frames. Parsing never trusts the peer:
// size-limited, and a parse failure is a Status, never a crash.
#pragma once

#include <google/protobuf/message_lite.h>

#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/base/status.h"

namespace mirrorcast {

zmq::message_t ToFrame(const google::protobuf::MessageLite& message);

// Parses one frame into `out`; Rejected if it is larger than `max_bytes` or malformed.
Status ParseFrame(const zmq::message_t& frame, size_t max_bytes,
                  google::protobuf::MessageLite* out);

// Receives all frames of one message without blocking; empty when none waits.
std::vector<zmq::message_t> ReceiveMultipart(zmq::socket_t& socket);

// Sends frames as one message without blocking. False if the socket would
// block (peer gone or over its high-water mark): the message is dropped, by
// design, so one slow peer never stalls the sender.
bool SendMultipartNoWait(zmq::socket_t& socket, std::vector<zmq::message_t>& frames);

}  // namespace mirrorcast
