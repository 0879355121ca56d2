// Fuzzes ParseFrame, the first thing the broker and the clients do with a
// ZeroMQ frame from a peer, for every message type on the control and content
// sockets, with the limits the receivers use. What parses is handed on the
// way the receiver would: nested envelopes and manifests to their decoders,
// delta signatures to CheckSignature.
#include <google/protobuf/unknown_field_set.h>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>
#include <zmq.hpp>

#include "core/crypto/sha256.h"
#include "core/delta/delta.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "core/net/content_client.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"
#include "proto/mirrorcast.pb.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

// No key is trusted: nested envelopes go through parsing and the key lookup.
const TrustStore& NoTrust() {
  static const TrustStore trust;
  return trust;
}

// Parses `frame` into `out`; the limit is enforced, and a frame one byte over
// a tighter limit is refused whatever its content.
bool Parse(const zmq::message_t& frame, size_t max_bytes, google::protobuf::MessageLite* out) {
  if (frame.size() > 0) {
    if (ParseFrame(frame, frame.size() - 1, out).code() != Status::Code::kRejected) {
      __builtin_trap();
    }
  }
  const Status st = ParseFrame(frame, max_bytes, out);
  if (!st.ok() && st.code() != Status::Code::kRejected) __builtin_trap();
  return st.ok();
}

void Handle(const v1::ControlRequest& request) {
  if (request.has_publish()) {
    (void)OpenEnvelope(request.publish().envelope(), NoTrust());
  }
  if (request.has_put_objects()) {
    for (const std::string& object : request.put_objects().objects()) {
      auto index = ManifestIndex::Decode(object);
      if (index.ok()) (void)index->Root();
      (void)DecodeChunk(object);
    }
  }
  if (request.has_events()) (void)ValidateRepoName(request.events().repo());
}

void Handle(const v1::ControlReply& reply) {
  if (reply.has_events()) {
    for (const std::string& envelope : reply.events().envelopes()) {
      (void)OpenEnvelope(envelope, NoTrust());
    }
  }
}

void Handle(const v1::ContentRequest& request) {
  if (request.has_delta()) {
    (void)CheckSignature(request.delta().signature(), kMaxContentRequestBytes);
    (void)CheckSignatureFor(request.delta().signature(), 1u << 20);
  }
  if (request.has_ranges()) {
    // The broker's bound on a batch, against an independent count.
    const Status s = CheckRangesRequest(request.ranges());
    uint64_t total = 0;
    for (const auto& r : request.ranges().ranges()) total += r.length();
    const bool within = request.ranges().ranges_size() > 0 &&
                        static_cast<size_t>(request.ranges().ranges_size()) <= kMaxBatchRanges &&
                        total <= kMaxChunk;
    if (s.ok() != within) __builtin_trap();
  }
}

// Each part of a batched reply, checked as the client would against a small
// file it asked for: accepted only if it is exactly that file.
void Handle(const v1::ContentReply& reply) {
  for (const v1::RangeReply& part : reply.parts()) {
    for (const uint64_t size : {static_cast<uint64_t>(part.data().size()), part.total_size()}) {
      FileFetch file;
      file.path = "pool/a.deb";
      file.size = size;
      file.sha256 = Sha256Of(part.data());
      const Status s = CheckWholeFilePart(part, file);
      const bool whole = part.ok() && part.offset() == 0 && part.total_size() == size &&
                         part.data().size() == size;
      if (s.ok() != whole) __builtin_trap();
      file.sha256[0] = static_cast<char>(file.sha256[0] ^ 1);  // any other version
      if (CheckWholeFilePart(part, file).ok()) __builtin_trap();
    }
  }
}

// Whatever parsed serializes back to a frame that parses again.
void RoundTrip(const google::protobuf::MessageLite& message, size_t max_bytes,
               google::protobuf::MessageLite* scratch) {
  const zmq::message_t frame = ToFrame(message);
  if (!ParseFrame(frame, max_bytes, scratch).ok()) __builtin_trap();
}

}  // namespace

std::vector<std::string> MessagesSeeds() {
  std::vector<std::string> seeds;
  v1::ControlRequest hello;
  hello.set_protocol_version(kProtocolVersion);
  hello.set_request_id(1);
  hello.mutable_hello()->set_client("subscriber mirror-a");
  seeds.push_back(hello.SerializeAsString());

  v1::ControlRequest publish;
  publish.set_protocol_version(kProtocolVersion);
  publish.set_request_id(2);
  v1::Envelope envelope;
  envelope.set_protocol_version(kProtocolVersion);
  envelope.set_payload("\x08\x01");
  envelope.set_signature(std::string(64, '\x01'));
  envelope.set_key_id("00112233445566778899aabbccddeeff");
  publish.mutable_publish()->set_envelope(envelope.SerializeAsString());
  seeds.push_back(publish.SerializeAsString());

  v1::ControlRequest put;
  put.set_protocol_version(kProtocolVersion);
  put.set_request_id(4);
  put.mutable_put_objects()->set_repo("debian-main");
  put.mutable_put_objects()->add_objects(ManifestIndex{}.Encode());
  seeds.push_back(put.SerializeAsString());

  v1::ControlReply events;
  events.set_protocol_version(kProtocolVersion);
  events.set_request_id(3);
  events.set_ok(true);
  events.mutable_events()->add_envelopes(envelope.SerializeAsString());
  events.mutable_events()->set_latest_serial(9);
  seeds.push_back(events.SerializeAsString());

  v1::ContentRequest delta;
  delta.set_protocol_version(kProtocolVersion);
  delta.set_request_id(4);
  delta.set_repo("debian-main");
  delta.mutable_delta()->set_path("pool/a.deb");
  delta.mutable_delta()->set_expected_sha256(std::string(32, '\x22'));
  // RS_RK_BLAKE2_SIG_MAGIC, block 2048, strong sum 16, one block.
  std::string sig("rs\x01\x47\x00\x00\x08\x00\x00\x00\x00\x10", 12);
  sig.append(20, '\x33');
  delta.mutable_delta()->set_signature(sig);
  seeds.push_back(delta.SerializeAsString());

  v1::ContentReply data;
  data.set_protocol_version(kProtocolVersion);
  data.set_request_id(5);
  data.set_ok(true);
  data.set_total_size(100);
  data.set_offset(10);
  data.set_data("some content bytes");
  seeds.push_back(data.SerializeAsString());

  v1::ContentRequest ranges;
  ranges.set_protocol_version(kProtocolVersion);
  ranges.set_request_id(6);
  ranges.set_repo("debian-main");
  for (int i = 0; i < 3; ++i) {
    auto* r = ranges.mutable_ranges()->add_ranges();
    r->set_path("pool/p" + std::to_string(i) + ".deb");
    r->set_sha256(std::string(32, static_cast<char>('\x40' + i)));
    r->set_length(1000 + i);
  }
  seeds.push_back(ranges.SerializeAsString());

  v1::ContentReply parts;
  parts.set_protocol_version(kProtocolVersion);
  parts.set_request_id(6);
  parts.set_ok(true);
  auto* whole = parts.add_parts();
  whole->set_ok(true);
  whole->set_total_size(5);
  whole->set_data("12345");
  auto* refused = parts.add_parts();
  refused->set_error("pool/p1.deb (sha256 4141...) is not a version any published manifest names");
  seeds.push_back(parts.SerializeAsString());

  v1::Ack ack;
  ack.set_protocol_version(kProtocolVersion);
  ack.set_mirror_id("mirror-a");
  ack.set_repo("debian-main");
  ack.set_serial(9);
  ack.set_state(v1::ACK_APPLIED);
  ack.set_seconds(1.5);
  seeds.push_back(ack.SerializeAsString());
  return seeds;
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast;
  using namespace mirrorcast::fuzz;
  const zmq::message_t frame(data, size);
  // The brokers' look at a request before parsing it: whatever it accepts
  // is a frame whose fields it read within bounds, and a frame the parser
  // accepts with a known body is never refused by it for its shape.
  const auto peek = PeekRequest(frame);
  if (peek.ok() && peek->body_bytes > size) __builtin_trap();
  {
    v1::ControlRequest m, again;
    if (Parse(frame, kMaxControlMessageBytes, &m)) {
      // A canonical request (as our clients write them): the peek reads it
      // too, and names its body.
      if (m.GetReflection()->GetUnknownFields(m).empty() &&
          m.SerializeAsString() == std::string(reinterpret_cast<const char*>(data), size)) {
        if (!peek.ok()) __builtin_trap();
        if (m.body_case() != 0 && peek->body_field != static_cast<uint32_t>(m.body_case())) {
          __builtin_trap();
        }
      }
      Handle(m);
      RoundTrip(m, kMaxControlMessageBytes, &again);
    }
  }
  {
    v1::ContentRequest m, again;
    if (Parse(frame, kMaxContentRequestBytes, &m)) {
      Handle(m);
      RoundTrip(m, kMaxContentRequestBytes, &again);
    }
  }
  {
    v1::ControlReply m, again;
    if (Parse(frame, kMaxControlMessageBytes, &m)) {
      Handle(m);
      RoundTrip(m, kMaxControlMessageBytes, &again);
    }
  }
  {
    v1::ContentReply m, again;
    if (Parse(frame, kMaxContentReplyBytes, &m)) {
      Handle(m);
      RoundTrip(m, kMaxContentReplyBytes, &again);
    }
  }
  {
    v1::Ack m, again;
    if (Parse(frame, kMaxControlMessageBytes, &m)) RoundTrip(m, kMaxControlMessageBytes, &again);
  }
  return 0;
}
