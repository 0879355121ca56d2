#include <gtest/gtest.h>

#include <string>

#include "core/net/messages.h"
#include "core/wire/envelope.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {
namespace {

zmq::message_t Frame(const std::string& bytes) {
  return zmq::message_t(bytes.data(), bytes.size());
}

TEST(PeekRequestTest, ReadsVersionIdAndBodyWithoutParsingIt) {
  v1::ControlRequest request;
  request.set_protocol_version(kProtocolVersion);
  request.set_request_id(77);
  request.mutable_ack()->mutable_ack()->set_mirror_id("mirror-a");
  auto peek = PeekRequest(ToFrame(request));
  ASSERT_TRUE(peek.ok()) << peek.status().ToString();
  EXPECT_EQ(peek->protocol_version, kProtocolVersion);
  EXPECT_EQ(peek->request_id, 77u);
  EXPECT_EQ(peek->body_field, static_cast<uint32_t>(v1::ControlRequest::kAck));
  EXPECT_EQ(peek->body_bytes, request.ack().ByteSizeLong());
  EXPECT_EQ(peek->length_delimited_fields, 1);

  // An empty frame is an empty request; no body.
  auto empty = PeekRequest(Frame(""));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->body_field, 0u);
}

TEST(PeekRequestTest, RefusesWhatIsNoMessageOrHasTooManyFields) {
  // A length past the end, a cut varint, a group, tag 0.
  for (const std::string& bad :
       {std::string("\x1a\x05"
                    "ab",
                    4),
        std::string("\x08\xff", 2), std::string("\x0b", 1), std::string("\x00\x01", 2)}) {
    EXPECT_FALSE(PeekRequest(Frame(bad)).ok()) << bad.size();
  }
  std::string many;
  for (int i = 0; i < 17; ++i) many += std::string("\x08\x01", 2);
  auto peek = PeekRequest(Frame(many));
  ASSERT_FALSE(peek.ok());
  EXPECT_NE(peek.status().message().find("too many fields"), std::string::npos);
  EXPECT_TRUE(PeekRequest(Frame(many.substr(0, 32))).ok());
}

}  // namespace
}  // namespace mirrorcast
