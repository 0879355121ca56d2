#include "core/net/messages.h"

namespace mirrorcast {

zmq::message_t ToFrame(const google::protobuf::MessageLite& message) {
  const size_t size = message.ByteSizeLong();
  zmq::message_t frame(size);
  message.SerializeWithCachedSizesToArray(static_cast<uint8_t*>(frame.data()));
  return frame;
}

Status ParseFrame(const zmq::message_t& frame, size_t max_bytes,
                  google::protobuf::MessageLite* out) {
  if (frame.size() > max_bytes) {
    return Status::Rejected("message of " + std::to_string(frame.size()) + " bytes exceeds " +
                            std::to_string(max_bytes));
  }
  if (frame.size() > static_cast<size_t>(INT32_MAX) ||
      !out->ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
    return Status::Rejected("malformed " + out->GetTypeName());
  }
  return Status::Ok();
}

std::vector<zmq::message_t> ReceiveMultipart(zmq::socket_t& socket) {
  std::vector<zmq::message_t> frames;
  for (;;) {
    zmq::message_t frame;
    auto got =
        socket.recv(frame, frames.empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
    if (!got) break;
    bool more = frame.more();
    frames.push_back(std::move(frame));
    if (!more) break;
  }
  return frames;
}

bool SendMultipartNoWait(zmq::socket_t& socket, std::vector<zmq::message_t>& frames) {
  for (size_t i = 0; i < frames.size(); ++i) {
    auto flags = zmq::send_flags::dontwait;
    if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
    auto sent = socket.send(frames[i], flags);
    // Only the first frame can block: ZeroMQ delivers multipart messages whole.
    if (!sent) return false;
  }
  return true;
}

}  // namespace mirrorcast
