#include "core/net/messages.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <zmq.h>

#include "core/base/log.h"
#include "core/crypto/sha256.h"

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

std::optional<std::string> UserIdOf(const zmq::message_t& frame) {
  const char* user_id = zmq_msg_gets(frame.handle(), "User-Id");
  if (user_id == nullptr) return std::nullopt;
  return std::string(user_id);
}

std::string PeerOf(const std::vector<zmq::message_t>& frames) {
  if (frames.empty()) return std::string();
  if (auto user_id = UserIdOf(frames.back())) return "k:" + *user_id;
  return frames.front().to_string();
}

std::string PeerForLog(std::string_view peer) {
  if (peer.substr(0, 2) == "k:") return EscapeForLog(peer.substr(2), 256);
  return ToHex(peer).substr(0, 64);
}

Result<RequestPeek> PeekRequest(const zmq::message_t& frame, int max_fields) {
  using google::protobuf::internal::WireFormatLite;
  if (frame.size() > static_cast<size_t>(INT32_MAX)) return Status::Rejected("frame too large");
  google::protobuf::io::CodedInputStream in(static_cast<const uint8_t*>(frame.data()),
                                            static_cast<int>(frame.size()));
  RequestPeek peek;
  for (int fields = 0;; ++fields) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) {  // the end, or a tag that is no tag
      if (in.CurrentPosition() != static_cast<int>(frame.size())) {
        return Status::Rejected("malformed request");
      }
      break;
    }
    if (fields >= max_fields) return Status::Rejected("request with too many fields");
    const uint32_t number = WireFormatLite::GetTagFieldNumber(tag);
    switch (WireFormatLite::GetTagWireType(tag)) {
      case WireFormatLite::WIRETYPE_VARINT: {
        uint64_t v = 0;
        if (!in.ReadVarint64(&v)) return Status::Rejected("malformed request");
        if (number == 1) peek.protocol_version = static_cast<uint32_t>(v);
        if (number == 2) peek.request_id = v;
        break;
      }
      case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: {
        uint32_t length = 0;
        if (!in.ReadVarint32(&length) || !in.Skip(static_cast<int>(length))) {
          return Status::Rejected("malformed request");
        }
        peek.body_field = number;
        peek.body_bytes = length;
        ++peek.length_delimited_fields;
        break;
      }
      case WireFormatLite::WIRETYPE_FIXED32:
        if (!in.Skip(4)) return Status::Rejected("malformed request");
        break;
      case WireFormatLite::WIRETYPE_FIXED64:
        if (!in.Skip(8)) return Status::Rejected("malformed request");
        break;
      default:  // groups: none of our messages has one
        return Status::Rejected("malformed request");
    }
  }
  return peek;
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
