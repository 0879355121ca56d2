// The client side of a publish, shared by everything that signs a
// RepoChanged and hands it to the origin broker: mirrorcast-publish (a new
// serial from a tree scan) and `mirrorcast recall` (an earlier serial's
// content again, as a new serial). Building the event, sealing it, sending it
// and reading the broker's manifest chunks live here once, so both sign and
// submit exactly the same way (docs/protocol.md §3, "Signed payloads").
//
// Functions are stateless; RemoteChunks uses the ContentClient it is given
// (one thread, like the client).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "core/crypto/keys.h"
#include "core/manifest/chunks.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/endpoint.h"
#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

// What a broker's Hello says of one repo: its latest serial and manifest
// root (serial 0 and no root when the broker does not know the repo), and
// its recall window (absent from a broker that predates recalls).
struct BrokerRepoHead {
  uint64_t serial = 0;
  std::string root;  // 32 raw bytes when serial > 0
  v1::RecallWindow recall;
};
// Corruption when the broker announces a malformed root.
Result<BrokerRepoHead> FindRepoHead(const v1::HelloReply& hello, const std::string& repo);

// A failure talking to `broker` while doing `what`, as a sentence for the
// operator; the code is kept (Timeout and Unavailable mean exit code 3).
// `waited` is the wait that ran out.
Status DescribeBrokerFailure(const Status& s, const HostPort& broker, std::string_view what,
                             std::chrono::milliseconds waited);

// Manifest chunks read from a broker's content socket as they are asked for
// (each checked against its id by the chunk readers in core/manifest), kept
// in memory: a publisher or a recall reads only the chunks that differ.
class RemoteChunks : public ChunkSource {
 public:
  explicit RemoteChunks(ContentClient& content) : content_(content) {}
  Result<std::string> LoadChunk(std::string_view id) override;
  uint64_t bytes_fetched() const { return stats_.bytes_fetched; }

 private:
  ContentClient& content_;
  FetchStats stats_;
  std::map<std::string, std::string, std::less<>> chunks_;
};

// A manifest index fetched by its root (checked against it) and decoded.
Result<ManifestIndex> FetchManifestIndex(ContentClient& content, const std::string& root);

// The event to sign: `changes` (sorted by path, one per path) turn the
// manifest at `previous_serial` into `next`. A change list over
// `max_inline_change_bytes` is left out (its changes need not be held:
// `changes` may then be empty, `change_count` still counts them).
struct RepoChangedDraft {
  std::string repo;
  uint64_t previous_serial = 0;
  std::string root;  // next manifest's root
  uint64_t entries = 0;
  std::vector<v1::Change> changes;
  uint64_t change_count = 0;
  size_t change_bytes = 0;  // serialized size of the change list (+4 per change)
  size_t max_inline_change_bytes = kMaxInlineChangeBytes;
  int64_t now_unix = 0;
  int64_t expires_unix = 0;
  // A recall: the serial whose content this restores, and why.
  uint64_t recall_of = 0;
  std::string recall_reason;
  // The broker's key-set version (HelloReply.keyset_version; 0: fixed keys).
  uint64_t keyset_version = 0;
};

struct SealedEvent {
  std::string envelope;  // serialized, signed Envelope
  uint64_t serial = 0;   // previous_serial + 1
  bool changes_omitted = false;
};

// Builds RepoChanged(previous_serial + 1) from `draft` (consumed), checks it
// as every verifier will (CheckRepoChanged) and seals it with `key`.
// Internal when the result would exceed kMaxEnvelopeBytes.
Result<SealedEvent> SealRepoChanged(RepoChangedDraft draft, const SigningKey& key);
// The same signed by every key of `keys` (the first, then cosignatures: a
// key-set publisher rule with a threshold needs that many).
Result<SealedEvent> SealRepoChanged(RepoChangedDraft draft,
                                    const std::vector<const SigningKey*>& keys);

// Hands `event` to the broker and waits for its durable confirmation: the
// broker checks every new file before it answers, so the wait is `timeout`
// plus 1 ms per change. Failures come back through DescribeBrokerFailure; a
// Timeout says the broker may still accept the event.
Result<v1::PublishReply> SubmitPublish(ControlClient& control, const SealedEvent& event,
                                       uint64_t change_count, std::chrono::milliseconds timeout);

// Process exit code of a command that publishes (mirrorcast-publish,
// mirrorcast recall): 0 ok, 2 usage/config error, 3 broker unreachable or
// timed out, 1 anything else (the publish failed or was refused).
int PublishExitCode(const Status& status);

}  // namespace mirrorcast
