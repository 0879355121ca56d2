// Signed envelopes: the only way a RepoChanged, Heartbeat or Recall travels.
//
// The signature covers the exact payload bytes (with a domain-separation
// prefix); verification happens on those bytes before anything is parsed, and
// the payload is never re-serialized before it is checked.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "core/crypto/keys.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

inline constexpr uint32_t kProtocolVersion = 2;
inline constexpr std::string_view kEnvelopeDomain{"mirrorcast-envelope-v2\0", 23};

// Limits on untrusted input. A peer that exceeds them is refused, not trusted.
// A broadcast event carries at most kMaxInlineChangeBytes of change list (the
// publisher leaves a larger one out), so this bound is never reached by an
// honest publisher.
inline constexpr size_t kMaxEnvelopeBytes = 16u << 20;
inline constexpr size_t kMaxInlineChangeBytes = 4u << 20;
// The objects of one PutObjectsRequest; the control message limit leaves
// room for framing.
inline constexpr size_t kMaxPutObjectsBytes = 16u << 20;
inline constexpr size_t kMaxControlMessageBytes = 40u << 20;
inline constexpr size_t kMaxContentRequestBytes = 16u << 20;  // carries delta signatures
inline constexpr uint32_t kMaxChunk = 1u << 20;

// Signatures beyond the first that an envelope may carry (thresholds).
inline constexpr int kMaxCosignatures = 15;

// Serializes `payload` (protocol_version is set here), signs it, and returns the
// serialized Envelope.
std::string SealEnvelope(v1::SignedPayload payload, const SigningKey& key);
// The same signed by every key of `keys` (at least one; the first is the
// envelope's key_id, the others are cosignatures).
std::string SealEnvelope(v1::SignedPayload payload, const std::vector<const SigningKey*>& keys);

struct OpenedEnvelope {
  v1::SignedPayload payload;
  std::string key_id;                // the envelope's first signer
  std::vector<std::string> signers;  // distinct trusted keys with a valid signature
};

// Parses and verifies serialized Envelope bytes from an untrusted peer:
// size limit, protocol version, known key, valid signature, parsable payload.
// Never asserts on bad input.
Result<OpenedEnvelope> OpenEnvelope(std::string_view envelope_bytes, const TrustStore& trust);
// The same, but at least `threshold` distinct keys of `trust` must have
// signed (the first signature and the cosignatures count; a key that signs
// twice counts once). Nothing is parsed before the signatures are verified.
Result<OpenedEnvelope> OpenEnvelopeSignedBy(std::string_view envelope_bytes,
                                            const TrustStore& trust, size_t threshold);

// Checks what every verifier checks of a RepoChanged beyond its signature:
// repo name, serial > previous_serial, digest length, not expired at now_unix,
// the change count (and no changes when they are omitted), and every carried
// change's path (ValidateRelativePath), entry shape and order (strictly
// increasing paths: one change per path).
// How far ahead of the checker's clock a publish time may be.
inline constexpr int64_t kMaxClockSkewSeconds = 600;

// A recall (recall_of set) also needs recall_of < previous_serial and a
// reason of 1..kMaxRecallReasonBytes without control characters; an event
// that is not a recall carries no reason.
inline constexpr size_t kMaxRecallReasonBytes = 1024;

Status CheckRepoChanged(const v1::RepoChanged& event, int64_t now_unix);

// The same time checks for a Heartbeat (the freshness proof): an expiry is
// required (0 is refused: a heartbeat that never expires proves nothing),
// not expired at now_unix, issued at most kMaxClockSkewSeconds ahead of it,
// and not expiring before it was issued.
Status CheckHeartbeat(const v1::Heartbeat& heartbeat, int64_t now_unix);

// Repo names: 1-64 of [A-Za-z0-9._-], not starting with '.'.
Status ValidateRepoName(std::string_view repo);

}  // namespace mirrorcast
