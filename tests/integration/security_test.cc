// A real mirrorcast-subscriber process against a hostile broker: every
// forged, tampered, mis-signed, expired, mismatched or path-escaping event is
// rejected, the tree stays exactly as it was, and the rejection is ACKed.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <zmq.hpp>

#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "core/net/endpoint.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"
#include "tests/support/entries.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Speaks the broker protocol on loopback and serves exactly what the test
// configured: an attacker (or a compromised relay) in front of a mirror.
class HostileBroker {
 public:
  std::vector<std::string> envelopes;  // answered to every Events request
  uint64_t latest_serial = 1;
  std::map<std::string, std::string> objects;  // manifest objects: sha256 -> bytes
  std::map<std::string, std::string> files;    // path -> content
  std::string repo = "demo";

  void Start() {
    control_.bind("tcp://127.0.0.1:0");
    events_.bind("tcp://127.0.0.1:0");
    content_.bind("tcp://127.0.0.1:0");
    port_ = *BoundPort(control_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~HostileBroker() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint16_t port() const { return port_; }
  // Serves `m` as an honest broker would: its index and chunks by SHA-256.
  // Returns the chunk ids in index order.
  std::vector<std::string> ServeManifest(const Manifest& m) {
    std::vector<std::string> ids;
    auto index = BuildIndex(m, [&](const ChunkRef& ref, std::string bytes) {
      objects[ref.id] = std::move(bytes);
      ids.push_back(ref.id);
      return Status::Ok();
    });
    objects[index->Root()] = index->Encode();
    return ids;
  }
  std::vector<v1::Ack> acks() {
    std::lock_guard lock(mu_);
    return acks_;
  }

 private:
  void Loop() {
    while (!stop_) {
      zmq::pollitem_t items[] = {{static_cast<void*>(control_), 0, ZMQ_POLLIN, 0},
                                 {static_cast<void*>(content_), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 2, 50ms);
      if (items[0].revents & ZMQ_POLLIN) Control();
      if (items[1].revents & ZMQ_POLLIN) Content();
    }
  }
  void Control() {
    auto frames = ReceiveMultipart(control_);
    if (frames.size() != 2) return;
    v1::ControlRequest req;
    if (!ParseFrame(frames[1], 1 << 30, &req).ok()) return;
    v1::ControlReply reply;
    reply.set_request_id(req.request_id());
    reply.set_ok(true);
    if (req.has_hello()) {
      reply.mutable_hello()->set_events_port(*BoundPort(events_));
      reply.mutable_hello()->set_content_port(*BoundPort(content_));
      auto* r = reply.mutable_hello()->add_repos();
      r->set_repo(repo);
      r->set_serial(latest_serial);
    } else if (req.has_events()) {
      auto* ev = reply.mutable_events();
      if (req.events().since_serial() < latest_serial) {
        for (const auto& e : envelopes) ev->add_envelopes(e);
      }
      ev->set_latest_serial(latest_serial);
      ev->set_oldest_serial(1);
    } else if (req.has_ack()) {
      std::lock_guard lock(mu_);
      acks_.push_back(req.ack().ack());
    }
    std::vector<zmq::message_t> out;
    out.push_back(std::move(frames[0]));
    out.push_back(ToFrame(reply));
    SendMultipartNoWait(control_, out);
  }
  void Content() {
    auto frames = ReceiveMultipart(content_);
    if (frames.size() != 2) return;
    v1::ContentRequest req;
    if (!ParseFrame(frames[1], 1 << 30, &req).ok()) return;
    v1::ContentReply reply;
    reply.set_request_id(req.request_id());
    const std::string* object = nullptr;
    uint64_t offset = 0, length = 0;
    if (req.has_range()) {
      auto it = files.find(req.range().path());
      if (it != files.end()) object = &it->second;
      offset = req.range().offset();
      length = req.range().length();
    } else if (req.has_object()) {
      auto it = objects.find(req.object().sha256());
      if (it != objects.end()) object = &it->second;
      offset = req.object().offset();
      length = req.object().length();
    }
    if (object == nullptr) {
      reply.set_ok(false);
      reply.set_error("not here");
    } else {
      reply.set_ok(true);
      reply.set_total_size(object->size());
      reply.set_offset(offset);
      if (offset < object->size()) reply.set_data(object->substr(offset, length));
    }
    std::vector<zmq::message_t> out;
    out.push_back(std::move(frames[0]));
    out.push_back(ToFrame(reply));
    SendMultipartNoWait(content_, out);
  }

  zmq::context_t context_{1};
  zmq::socket_t control_{context_, zmq::socket_type::router};
  zmq::socket_t events_{context_, zmq::socket_type::xpub};
  zmq::socket_t content_{context_, zmq::socket_type::router};
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<v1::Ack> acks_;
};

class SubscriberUnderAttack : public ::testing::Test {
 protected:
  void SetUp() override {
    origin_ = *SigningKey::Generate();
    WriteFile(dir_ / "origin.pub", origin_.public_key().ToFileText());
    // The mirror already serves something; an attack must leave it alone.
    WriteFile(dir_ / "tree/Packages/a.rpm", "old package");
    WriteFile(dir_ / "tree/repodata/repomd.xml", "<repomd/>");
    before_ = SnapshotTree(dir_ / "tree");
  }

  // A well-formed serial-1 event adding `path` with `content`, with its manifest.
  v1::SignedPayload EventAdding(const std::string& path, const std::string& content,
                                Manifest* manifest_out = nullptr) {
    Manifest m("demo", 1);
    m.Put(FileEntryOf(path, content));
    v1::SignedPayload payload;
    auto* ev = payload.mutable_repo_changed();
    ev->set_repo("demo");
    ev->set_serial(1);
    ev->set_previous_serial(0);
    ev->set_published_unix(time(nullptr));
    ev->set_expires_unix(time(nullptr) + 3600);
    ev->set_manifest_sha256(m.Digest());
    ev->set_manifest_entries(m.size());
    ev->set_change_count(1);
    auto* change = ev->add_changes();
    change->set_kind(v1::CHANGE_ADDED);
    *change->mutable_entry() = FileEntryOf(path, content);
    if (manifest_out) *manifest_out = m;
    return payload;
  }

  // Runs `mirrorcast-subscriber --once` against the hostile broker.
  RunResult RunSubscriber() {
    broker_.Start();
    return testing::Run(
        {BinPath("mirrorcast-subscriber").string(), "--broker",
         "127.0.0.1:" + std::to_string(broker_.port()), "--trust", (dir_ / "origin.pub").string(),
         "--repo", "demo", "--tree", (dir_ / "tree").string(), "--state", (dir_ / "state").string(),
         "--id", "victim", "--once", "--stall-timeout", "5", "--insecure-plaintext"},
        60s);
  }

  // The subscriber refused, said why in its ACK, and left the tree alone.
  void ExpectRefused(const RunResult& r, v1::AckState state, const std::string& reason) {
    EXPECT_NE(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(SnapshotTree(dir_ / "tree"), before_) << r.err;
    bool found = false;
    for (const auto& ack : broker_.acks()) {
      if (ack.state() == state && ack.error().find(reason) != std::string::npos) found = true;
      EXPECT_EQ(ack.serial(), 0u);  // still at the old serial
    }
    EXPECT_TRUE(found) << "no " << v1::AckState_Name(state) << " ACK mentioning '" << reason
                       << "'\n"
                       << r.err;
  }

  TempDir dir_{"mirrorcast-attack"};
  SigningKey origin_;
  HostileBroker broker_;
  TreeSnapshot before_;
};

TEST_F(SubscriberUnderAttack, ForgedSignatureIsRejected) {
  v1::Envelope env;
  ASSERT_TRUE(env.ParseFromString(SealEnvelope(EventAdding("Packages/evil.rpm", "x"), origin_)));
  std::string sig = env.signature();
  sig[10] ^= 0x01;
  env.set_signature(sig);
  broker_.envelopes = {env.SerializeAsString()};
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "signature");
}

TEST_F(SubscriberUnderAttack, TamperedPayloadIsRejected) {
  v1::Envelope env;
  ASSERT_TRUE(env.ParseFromString(SealEnvelope(EventAdding("Packages/evil.rpm", "x"), origin_)));
  std::string payload = env.payload();
  const size_t at = payload.find("evil");
  ASSERT_NE(at, std::string::npos);
  payload[at] = 'E';  // still a well-formed protobuf, different meaning
  env.set_payload(payload);
  broker_.envelopes = {env.SerializeAsString()};
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "signature");
}

TEST_F(SubscriberUnderAttack, EventSignedByAnUnknownKeyIsRejected) {
  SigningKey rogue = *SigningKey::Generate();
  broker_.envelopes = {SealEnvelope(EventAdding("Packages/evil.rpm", "x"), rogue)};
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "unknown signing key");
}

TEST_F(SubscriberUnderAttack, PathWithDotDotIsRejectedAndNothingIsWrittenOutside) {
  broker_.envelopes = {SealEnvelope(EventAdding("Packages/../../escaped.txt", "x"), origin_)};
  broker_.files["Packages/../../escaped.txt"] = "x";
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "..");
  EXPECT_FALSE(fs::exists(dir_ / "escaped.txt"));
}

TEST_F(SubscriberUnderAttack, AbsolutePathIsRejected) {
  const fs::path target = dir_ / "absolute.txt";
  broker_.envelopes = {SealEnvelope(EventAdding(target.string(), "x"), origin_)};
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "absolute");
  EXPECT_FALSE(fs::exists(target));
}

TEST_F(SubscriberUnderAttack, ExpiredEventIsRejected) {
  v1::SignedPayload payload = EventAdding("Packages/new.rpm", "x");
  payload.mutable_repo_changed()->set_expires_unix(time(nullptr) - 60);
  broker_.envelopes = {SealEnvelope(payload, origin_)};
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "expired");
}

// A genuine event whose change list does not fit this mirror (it holds an
// adopted tree), so it must fetch the manifest named by the signed root.
v1::SignedPayload EventThatNeedsTheManifest(v1::SignedPayload payload) {
  payload.mutable_repo_changed()->set_previous_serial(0);
  payload.mutable_repo_changed()->mutable_changes(0)->set_kind(v1::CHANGE_MODIFIED);
  return payload;
}

TEST_F(SubscriberUnderAttack, ManifestThatDoesNotMatchTheSignedRootIsRejected) {
  broker_.envelopes = {
      SealEnvelope(EventThatNeedsTheManifest(EventAdding("Packages/new.rpm", "x")), origin_)};
  // The broker answers for the signed root with another manifest's index.
  Manifest other("demo", 1);
  other.Put(FileEntryOf("Packages/other.rpm", "y"));
  broker_.ServeManifest(other);
  Manifest signed_manifest("demo", 1);
  signed_manifest.Put(FileEntryOf("Packages/new.rpm", "x"));
  broker_.objects[signed_manifest.Digest()] = broker_.objects[other.Digest()];
  broker_.files["Packages/other.rpm"] = "y";
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "mix-and-match");
}

TEST_F(SubscriberUnderAttack, TamperedManifestChunkIsRejected) {
  Manifest m;
  broker_.envelopes = {
      SealEnvelope(EventThatNeedsTheManifest(EventAdding("Packages/new.rpm", "x", &m)), origin_)};
  const std::vector<std::string> ids = broker_.ServeManifest(m);
  ASSERT_EQ(ids.size(), 1u);
  broker_.objects[ids[0]][3] ^= 0x20;
  broker_.files["Packages/new.rpm"] = "x";
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "mix-and-match");
}

TEST_F(SubscriberUnderAttack, ManifestChunkFromAnotherSerialIsRejected) {
  Manifest m;
  broker_.envelopes = {
      SealEnvelope(EventThatNeedsTheManifest(EventAdding("Packages/new.rpm", "x", &m)), origin_)};
  const std::vector<std::string> ids = broker_.ServeManifest(m);
  ASSERT_EQ(ids.size(), 1u);
  // A genuine chunk of another serial's manifest, served under this id.
  Manifest older("demo", 0);
  older.Put(FileEntryOf("Packages/new.rpm", "an older version"));
  const std::vector<std::string> old_ids = broker_.ServeManifest(older);
  broker_.objects[ids[0]] = broker_.objects[old_ids[0]];
  broker_.files["Packages/new.rpm"] = "x";
  ExpectRefused(RunSubscriber(), v1::ACK_REJECTED, "mix-and-match");
}

TEST_F(SubscriberUnderAttack, MissingManifestChunkFailsAndChangesNothing) {
  Manifest m;
  broker_.envelopes = {
      SealEnvelope(EventThatNeedsTheManifest(EventAdding("Packages/new.rpm", "x", &m)), origin_)};
  const std::vector<std::string> ids = broker_.ServeManifest(m);
  broker_.objects.erase(ids[0]);
  broker_.files["Packages/new.rpm"] = "x";
  ExpectRefused(RunSubscriber(), v1::ACK_FAILED, "not here");
}

TEST_F(SubscriberUnderAttack, ContentThatDoesNotMatchItsSignedHashNeverReachesTheTree) {
  const std::string good(100000, 'g');
  Manifest manifest;
  broker_.envelopes = {SealEnvelope(EventAdding("Packages/new.rpm", good, &manifest), origin_)};
  broker_.ServeManifest(manifest);
  std::string bad = good;
  bad[5000] = 'b';
  broker_.files["Packages/new.rpm"] = bad;
  ExpectRefused(RunSubscriber(), v1::ACK_FAILED, "SHA-256");
}

TEST_F(SubscriberUnderAttack, ContentLongerThanItsSignedSizeIsRefused) {
  const std::string good(100000, 'g');
  Manifest manifest;
  broker_.envelopes = {SealEnvelope(EventAdding("Packages/new.rpm", good, &manifest), origin_)};
  broker_.ServeManifest(manifest);
  broker_.files["Packages/new.rpm"] = good + std::string(1 << 20, 'e');  // endless data
  ExpectRefused(RunSubscriber(), v1::ACK_FAILED, "signed size");
}

}  // namespace
}  // namespace mirrorcast::testing
