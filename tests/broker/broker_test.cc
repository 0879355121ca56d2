// A real Broker in-process on 127.0.0.1 port 0, driven through the real
// clients (ControlClient, ContentClient): publishes accepted and refused, the
// event log, ACKs in the status reply, and the content socket's files,
// manifests and deltas (with its path and signature defences).
#include "broker/broker.h"

#include "broker/manifest_store.h"

#include <gtest/gtest.h>
#include <librsync.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/base/clock.h"
#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/delta/delta.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/wire/envelope.h"
#include "tests/support/entries.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr milliseconds kTimeout{5000};
constexpr const char* kRepo = "main";

// The manifest of serial 1 used by most tests.
Manifest FirstManifest() {
  Manifest m(kRepo, 1);
  m.Put(DirEntryOf("pool"));
  m.Put(FileEntryOf("pool/a.rpm", "package a"));
  m.Put(FileEntryOf("repomd.xml", "<repomd/>"));
  return m;
}

// A RepoChanged taking `from` to `to`, as a publisher signs it.
v1::RepoChanged EventFor(const Manifest& from, const Manifest& to) {
  const int64_t now = Clock::Real().NowUnix();
  v1::RepoChanged event;
  event.set_repo(to.repo());
  event.set_serial(to.serial());
  event.set_previous_serial(from.serial());
  event.set_published_unix(now);
  event.set_expires_unix(now + 3600);
  event.set_manifest_sha256(to.Digest());
  event.set_manifest_entries(to.size());
  for (v1::Change& c : DiffManifests(from, to)) *event.add_changes() = std::move(c);
  event.set_change_count(static_cast<uint64_t>(event.changes_size()));
  return event;
}

std::string Seal(const v1::RepoChanged& event, const SigningKey& key) {
  v1::SignedPayload payload;
  *payload.mutable_repo_changed() = event;
  return SealEnvelope(std::move(payload), key);
}

class BrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "tree/main");
    auto key = SigningKey::Generate();
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    key_.emplace(std::move(*key));
    WriteFile(dir_ / "publisher.pub", key_->public_key().ToFileText());

    BrokerOptions options;
    options.listen = HostPort{"127.0.0.1", 0};
    options.state_dir = dir_ / "state";
    options.tree_root = dir_ / "tree";
    options.trust = {dir_ / "publisher.pub"};
    options.broker_id = "test-broker";
    options.content_workers = 2;
    options_ = options;
    broker_ = std::make_unique<Broker>(options);
    Status started = broker_->Start();
    ASSERT_TRUE(started.ok()) << started.ToString();
    ASSERT_NE(broker_->control_port(), 0);
  }

  void TearDown() override {
    if (broker_) broker_->Stop();
  }

  HostPort Control() const { return HostPort{"127.0.0.1", broker_->control_port()}; }
  HostPort Content() const { return HostPort{"127.0.0.1", broker_->content_port()}; }

  Result<v1::ControlReply> SendPublish(const std::string& envelope) {
    ControlClient control(context_, Control());
    v1::ControlRequest request;
    request.mutable_publish()->set_envelope(envelope);
    return control.Call(std::move(request), kTimeout);
  }

  Result<v1::ControlReply> PutObjects(const std::vector<std::string>& objects) {
    ControlClient control(context_, Control());
    v1::ControlRequest request;
    request.mutable_put_objects()->set_repo(kRepo);
    for (const auto& o : objects) request.mutable_put_objects()->add_objects(o);
    return control.Call(std::move(request), kTimeout);
  }

  Result<v1::ControlReply> Publish(const Manifest& from, const Manifest& to) {
    return SendPublish(Seal(EventFor(from, to), *key_));
  }

  // The broker's serial of kRepo as Hello reports it (0 when absent).
  uint64_t HelloSerial() {
    ControlClient control(context_, Control());
    auto hello = control.Hello("test", kTimeout);
    EXPECT_TRUE(hello.ok()) << hello.status().ToString();
    if (!hello.ok()) return UINT64_MAX;
    for (const auto& r : hello->repos()) {
      if (r.repo() == kRepo) return r.serial();
    }
    return 0;
  }

  // Expects a refusal whose text contains `fragment`, and no change of serial.
  void ExpectRefused(const Result<v1::ControlReply>& reply, const std::string& fragment,
                     uint64_t serial_stays) {
    ASSERT_FALSE(reply.ok()) << "accepted, expected a refusal containing '" << fragment << "'";
    EXPECT_EQ(reply.status().code(), Status::Code::kRejected) << reply.status().ToString();
    EXPECT_NE(reply.status().message().find(fragment), std::string::npos)
        << reply.status().message();
    EXPECT_EQ(HelloSerial(), serial_stays);
  }

  TempDir dir_{"mirrorcast-broker"};
  zmq::context_t context_;
  std::optional<SigningKey> key_;
  BrokerOptions options_;
  std::unique_ptr<Broker> broker_;
};

TEST_F(BrokerTest, HelloReportsPortsAndNoReposYet) {
  ControlClient control(context_, Control());
  auto hello = control.Hello("test", kTimeout);
  ASSERT_TRUE(hello.ok()) << hello.status().ToString();
  EXPECT_NE(broker_->events_port(), 0);
  EXPECT_NE(broker_->content_port(), 0);
  EXPECT_NE(broker_->events_port(), broker_->control_port());
  EXPECT_NE(broker_->content_port(), broker_->control_port());
  EXPECT_EQ(hello->events_port(), broker_->events_port());
  EXPECT_EQ(hello->content_port(), broker_->content_port());
  EXPECT_EQ(hello->broker_id(), "test-broker");
  EXPECT_EQ(hello->repos_size(), 0);
}

TEST_F(BrokerTest, ValidPublishIsAcceptedAndVisibleEverywhere) {
  const Manifest manifest = FirstManifest();
  const std::string envelope = Seal(EventFor(Manifest(kRepo, 0), manifest), *key_);
  auto reply = SendPublish(envelope);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  ASSERT_TRUE(reply->has_publish());
  EXPECT_EQ(reply->publish().serial(), 1u);

  ControlClient control(context_, Control());
  auto hello = control.Hello("test", kTimeout);
  ASSERT_TRUE(hello.ok());
  ASSERT_EQ(hello->repos_size(), 1);
  EXPECT_EQ(hello->repos(0).repo(), kRepo);
  EXPECT_EQ(hello->repos(0).serial(), 1u);
  EXPECT_EQ(hello->repos(0).manifest_sha256(), manifest.Digest());

  auto status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ(status->broker_id(), "test-broker");
  EXPECT_GT(status->now_unix(), 0);
  ASSERT_EQ(status->repos_size(), 1);
  EXPECT_EQ(status->repos(0).serial(), 1u);
  EXPECT_EQ(status->repos(0).manifest_sha256(), manifest.Digest());
  EXPECT_EQ(status->mirrors_size(), 0);

  auto events = control.Events(kRepo, 0, 100, kTimeout);
  ASSERT_TRUE(events.ok()) << events.status().ToString();
  ASSERT_EQ(events->envelopes_size(), 1);
  EXPECT_EQ(events->envelopes(0), envelope);
  EXPECT_EQ(events->latest_serial(), 1u);
  EXPECT_EQ(events->oldest_serial(), 1u);
  EXPECT_FALSE(events->gap());

  events = control.Events(kRepo, 1, 100, kTimeout);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->envelopes_size(), 0);
  EXPECT_EQ(events->latest_serial(), 1u);

  // The manifest index is stored under its root, where the content socket
  // serves it from.
  EXPECT_TRUE(fs::exists(
      ManifestStore::ObjectPath(dir_ / "state/manifest-objects", FirstManifest().Digest())));
}

TEST_F(BrokerTest, SecondPublishWithTheRightChangeListIsAccepted) {
  const Manifest first = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  Manifest second = first;
  second.set_serial(2);
  second.Put(FileEntryOf("pool/a.rpm", "package a, rebuilt"));
  second.Put(FileEntryOf("pool/b.rpm", "package b"));
  second.Erase("repomd.xml");
  auto reply = Publish(first, second);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(reply->publish().serial(), 2u);
  EXPECT_EQ(HelloSerial(), 2u);
}

TEST_F(BrokerTest, PublishIsRefusedWhenTheStoredManifestCannotBeChecked) {
  const Manifest first = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  // The head's manifest damaged on disk (its index, then one of its chunks):
  // the change list cannot be checked, so the broker fails closed instead
  // of fanning out an unverifiable event, and says it is its own fault.
  const fs::path objects = dir_ / "state/manifest-objects";
  const fs::path index_file = ManifestStore::ObjectPath(objects, first.Digest());
  const std::string index_bytes = ReadFile(index_file);
  WriteFile(index_file, "damaged");
  Manifest second = first;
  second.set_serial(2);
  second.Put(FileEntryOf("pool/b.rpm", "package b"));
  ExpectRefused(Publish(first, second), "missing or damaged", 1);

  WriteFile(index_file, index_bytes);
  auto index = ManifestIndex::Decode(index_bytes);
  ASSERT_TRUE(index.ok());
  WriteFile(ManifestStore::ObjectPath(objects, index->refs[0].id), "damaged");
  ExpectRefused(Publish(first, second), "missing or damaged", 1);
}

TEST_F(BrokerTest, WrongSerialIsRefusedAsAConflict) {
  const Manifest first = FirstManifest();
  // Serial 2 after 1 when the broker has nothing.
  Manifest skipped = first;
  skipped.set_serial(2);
  Manifest one_back(kRepo, 1);
  ExpectRefused(Publish(one_back, skipped), "serial conflict", 0);

  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  // Serial 1 again: another publisher won it.
  Manifest again = FirstManifest();
  again.Put(FileEntryOf("other.rpm", "x"));
  ExpectRefused(Publish(Manifest(kRepo, 0), again), "serial conflict", 1);
}

TEST_F(BrokerTest, UntrustedKeyIsRefused) {
  auto stranger = SigningKey::Generate();
  ASSERT_TRUE(stranger.ok());
  const Manifest manifest = FirstManifest();
  ExpectRefused(SendPublish(Seal(EventFor(Manifest(kRepo, 0), manifest), *stranger)),
                "unknown signing key", 0);
}

TEST_F(BrokerTest, ChangeListThatDoesNotGiveTheSignedRootIsRefused) {
  const Manifest signed_manifest = FirstManifest();
  Manifest sent = signed_manifest;
  sent.Put(FileEntryOf("pool/evil.rpm", "not what was signed"));
  v1::RepoChanged event = EventFor(Manifest(kRepo, 0), sent);
  event.set_manifest_sha256(signed_manifest.Digest());
  ExpectRefused(SendPublish(Seal(event, *key_)), "change list does not turn serial 0", 0);
}

// A change list too large to broadcast is left out; the broker then takes
// the manifest from the uploaded objects, diffed against its previous one.
TEST_F(BrokerTest, OmittedChangeListNeedsTheUploadedManifestAndItsCount) {
  const Manifest first = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  Manifest second = first;
  second.set_serial(2);
  second.Put(FileEntryOf("pool/b.rpm", "package b"));
  second.Erase("pool/a.rpm");
  v1::RepoChanged event = EventFor(first, second);
  event.clear_changes();
  event.set_changes_omitted(true);
  ASSERT_EQ(event.change_count(), 2u);

  // Nothing uploaded: refused.
  ExpectRefused(SendPublish(Seal(event, *key_)), "was not uploaded", 1);

  std::vector<std::string> objects;
  auto index = BuildIndex(second, [&](const ChunkRef&, std::string bytes) {
    objects.push_back(std::move(bytes));
    return Status::Ok();
  });
  ASSERT_TRUE(index.ok());
  objects.push_back(index->Encode());
  auto put = PutObjects(objects);
  ASSERT_TRUE(put.ok()) << put.status().ToString();
  ASSERT_TRUE(put->ok()) << put->error();

  // A count that is not the diff's: refused.
  v1::RepoChanged miscounted = event;
  miscounted.set_change_count(5);
  ExpectRefused(SendPublish(Seal(miscounted, *key_)), "differs from serial 1 by 2 changes", 1);

  auto reply = SendPublish(Seal(event, *key_));
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_TRUE(reply->ok()) << reply->error();
  EXPECT_EQ(HelloSerial(), 2u);
}

TEST_F(BrokerTest, ChangeListThatDoesNotProduceTheManifestIsRefused) {
  const Manifest first = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  Manifest second = first;
  second.set_serial(2);
  second.Put(FileEntryOf("pool/b.rpm", "package b"));
  // Correct serials and digest, but the changes are those from an empty tree:
  // applied to serial 1 they re-add paths that already exist.
  v1::RepoChanged event = EventFor(first, second);
  event.clear_changes();
  for (v1::Change& c : DiffManifests(Manifest(kRepo, 1), second)) *event.add_changes() = c;
  event.set_change_count(static_cast<uint64_t>(event.changes_size()));
  ExpectRefused(SendPublish(Seal(event, *key_)), "change list does not turn serial 1", 1);

  // A change list that applies cleanly but leaves out a change.
  Manifest third = second;
  third.Put(FileEntryOf("pool/c.rpm", "package c"));
  event = EventFor(first, third);
  v1::RepoChanged partial = event;
  partial.clear_changes();
  for (const v1::Change& c : event.changes()) {
    if (c.entry().path() != "pool/c.rpm") *partial.add_changes() = c;
  }
  ASSERT_LT(partial.changes_size(), event.changes_size());
  partial.set_change_count(static_cast<uint64_t>(partial.changes_size()));
  ExpectRefused(SendPublish(Seal(partial, *key_)), "change list does not turn serial 1", 1);
}

TEST_F(BrokerTest, ExpiredEventIsRefused) {
  const Manifest manifest = FirstManifest();
  v1::RepoChanged event = EventFor(Manifest(kRepo, 0), manifest);
  const int64_t now = Clock::Real().NowUnix();
  event.set_published_unix(now - 7200);
  event.set_expires_unix(now - 3600);
  ExpectRefused(SendPublish(Seal(event, *key_)), "expired", 0);
}

TEST_F(BrokerTest, RestartKeepsTheLogAndRefusesAReplay) {
  const Manifest manifest = FirstManifest();
  const std::string envelope = Seal(EventFor(Manifest(kRepo, 0), manifest), *key_);
  ASSERT_TRUE(SendPublish(envelope).ok());
  broker_->Stop();
  broker_.reset();

  broker_ = std::make_unique<Broker>(options_);
  Status started = broker_->Start();
  ASSERT_TRUE(started.ok()) << started.ToString();
  ControlClient control(context_, Control());
  auto hello = control.Hello("test", kTimeout);
  ASSERT_TRUE(hello.ok()) << hello.status().ToString();
  ASSERT_EQ(hello->repos_size(), 1);
  EXPECT_EQ(hello->repos(0).serial(), 1u);
  EXPECT_EQ(hello->repos(0).manifest_sha256(), manifest.Digest());
  auto events = control.Events(kRepo, 0, 100, kTimeout);
  ASSERT_TRUE(events.ok()) << events.status().ToString();
  ASSERT_EQ(events->envelopes_size(), 1);
  EXPECT_EQ(events->envelopes(0), envelope);

  // The same signed event sent again (a replay) does not publish twice.
  ExpectRefused(SendPublish(envelope), "serial conflict", 1);
}

TEST_F(BrokerTest, AckIsRecordedAndShownInStatus) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  v1::Ack ack;
  ack.set_mirror_id("mirror-a");
  ack.set_repo(kRepo);
  ack.set_serial(1);
  ack.set_target_serial(1);
  ack.set_state(v1::ACK_APPLIED);
  ack.set_bytes_fetched(4096);
  ack.set_bytes_reused(1024);
  ack.set_bytes_signature(77);
  ack.set_seconds(0.25);
  ControlClient control(context_, Control());
  const int64_t before = Clock::Real().NowUnix();
  Status sent = control.SendAck(ack, kTimeout);
  ASSERT_TRUE(sent.ok()) << sent.ToString();

  auto status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  ASSERT_EQ(status->mirrors_size(), 1);
  const v1::MirrorStatus& m = status->mirrors(0);
  EXPECT_EQ(m.mirror_id(), "mirror-a");
  EXPECT_EQ(m.repo(), kRepo);
  EXPECT_EQ(m.serial(), 1u);
  EXPECT_EQ(m.state(), v1::ACK_APPLIED);
  EXPECT_EQ(m.bytes_fetched(), 4096u);
  EXPECT_EQ(m.bytes_reused(), 1024u);
  EXPECT_EQ(m.bytes_signature(), 77u);
  EXPECT_DOUBLE_EQ(m.seconds(), 0.25);
  EXPECT_GE(m.last_ack_unix(), before);
  EXPECT_LE(m.last_ack_unix(), status->now_unix());

  // A mirror id with a control character is refused and not recorded.
  ack.set_mirror_id("bad\nid");
  Status refused = control.SendAck(ack, kTimeout);
  EXPECT_EQ(refused.code(), Status::Code::kRejected) << refused.ToString();
  status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->mirrors_size(), 1);
}

TEST_F(BrokerTest, ContentServesFilesOfTheTree) {
  const std::string data = RandomBytes(300000, 1);  // more than one 256 KiB chunk
  WriteFile(dir_ / "tree/main/pool/a.rpm", data);
  ContentClient content(context_, Content(), kRepo);
  FetchStats stats;
  Status fetched = content.FetchFiles(
      {FileFetch{"pool/a.rpm", data.size(), Sha256Of(data), dir_ / "got"}}, &stats);
  ASSERT_TRUE(fetched.ok()) << fetched.ToString();
  EXPECT_EQ(ReadFile(dir_ / "got"), data);
  EXPECT_EQ(stats.bytes_fetched, data.size());
  EXPECT_EQ(stats.files_fetched, 1u);
}

TEST_F(BrokerTest, ContentRefusesPathsLeavingTheRepo) {
  // Both targets exist, so only the path checks stand between them and the client.
  WriteFile(dir_ / "tree/secret", "outside the repo");
  WriteFile(dir_ / "outside/file.txt", "outside the tree");
  fs::create_directory_symlink(dir_ / "outside", dir_ / "tree/main/link");
  ContentClient content(context_, Content(), kRepo);
  FetchStats stats;

  // The sizes are right: served, either fetch would succeed.
  Status dotdot = content.FetchFiles({FileFetch{"../secret", 16, "", dir_ / "got1"}}, &stats);
  EXPECT_EQ(dotdot.code(), Status::Code::kRejected) << dotdot.ToString();

  Status via_link = content.FetchFiles({FileFetch{"link/file.txt", 16, "", dir_ / "got2"}}, &stats);
  EXPECT_EQ(via_link.code(), Status::Code::kRejected) << via_link.ToString();
  EXPECT_EQ(stats.bytes_fetched, 0u);
  EXPECT_EQ(stats.files_fetched, 0u);

  // The same client still gets a legitimate file.
  WriteFile(dir_ / "tree/main/ok.txt", "fine");
  Status ok = content.FetchFiles({FileFetch{"ok.txt", 4, Sha256Of("fine"), dir_ / "got3"}}, &stats);
  ASSERT_TRUE(ok.ok()) << ok.ToString();
  EXPECT_EQ(ReadFile(dir_ / "got3"), "fine");
}

// The broker derives the new chunks from the change list itself and serves
// the manifest by its signed root: the index, then each chunk by its id.
TEST_F(BrokerTest, StoredManifestCanBeFetchedByItsRoot) {
  const Manifest manifest = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), manifest).ok());
  ContentClient content(context_, Content(), kRepo);
  FetchStats stats;
  auto bytes = content.FetchManifestObject(manifest.Digest(), 1 << 20, &stats);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto index = ManifestIndex::Decode(*bytes);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->Root(), manifest.Digest());
  Manifest fetched(kRepo, 1);
  for (const auto& ref : index->refs) {
    auto chunk = content.FetchManifestObject(ref.id, 1 << 20, &stats);
    ASSERT_TRUE(chunk.ok()) << chunk.status().ToString();
    auto entries = DecodeChunk(*chunk);
    ASSERT_TRUE(entries.ok());
    for (auto& e : *entries) fetched.Put(e);
  }
  EXPECT_EQ(fetched.Digest(), manifest.Digest());
  EXPECT_EQ(fetched.size(), manifest.size());

  // An object the broker never stored is refused.
  auto missing = content.FetchManifestObject(Sha256Of("nothing"), 1 << 20, &stats);
  EXPECT_EQ(missing.status().code(), Status::Code::kRejected) << missing.status().ToString();
}

class BrokerDeltaTest : public BrokerTest {
 protected:
  void SetUp() override {
    BrokerTest::SetUp();
    if (HasFatalFailure()) return;
    target_ = RandomBytes(400000, 2);
    std::string basis = target_;
    basis.replace(100000, 5000, RandomBytes(5000, 3));  // the mirror's older version
    WriteFile(dir_ / "tree/main/big.bin", target_);
    WriteFile(dir_ / "basis", basis);
    auto sig = ComputeSignature(dir_ / "basis");
    ASSERT_TRUE(sig.ok()) << sig.status().ToString();
    signature_ = *sig;
  }

  std::set<std::string> ScratchFiles() {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_ / "state/scratch")) {
      names.insert(entry.path().filename().string());
    }
    return names;
  }

  std::string target_;
  std::string signature_;
};

TEST_F(BrokerDeltaTest, SameSignatureGetsTheSameSharedDelta) {
  // Two mirrors holding the same old version.
  ContentClient first(context_, Content(), kRepo);
  ContentClient second(context_, Content(), kRepo);
  FetchStats stats1, stats2;
  Status s1 = first.FetchDelta("big.bin", Sha256Of(target_), signature_, dir_ / "delta1",
                               target_.size(), &stats1);
  ASSERT_TRUE(s1.ok()) << s1.ToString();
  Status s2 = second.FetchDelta("big.bin", Sha256Of(target_), signature_, dir_ / "delta2",
                                target_.size(), &stats2);
  ASSERT_TRUE(s2.ok()) << s2.ToString();

  const std::string delta = ReadFile(dir_ / "delta1");
  EXPECT_EQ(delta, ReadFile(dir_ / "delta2"));
  EXPECT_LT(delta.size(), target_.size() / 4);  // it really reuses the basis
  EXPECT_EQ(stats1.bytes_signature, signature_.size());
  EXPECT_EQ(stats1.bytes_fetched, delta.size());

  // The delta rebuilds the new version from the old one.
  std::string rebuilt_sha;
  Status applied =
      ApplyDelta(dir_ / "basis", dir_ / "delta1", dir_ / "rebuilt", target_.size(), &rebuilt_sha);
  ASSERT_TRUE(applied.ok()) << applied.ToString();
  EXPECT_EQ(rebuilt_sha, Sha256Of(target_));

  // Computed once: one delta file, held by the broker's cache.
  EXPECT_EQ(ScratchFiles(), std::set<std::string>{"delta-1"});
}

TEST_F(BrokerDeltaTest, Md4SignatureIsRefused) {
  // The same signature with the magic of librsync's MD4 format (big-endian).
  std::string md4 = signature_;
  ASSERT_GE(md4.size(), 12u);
  const uint32_t magic = RS_MD4_SIG_MAGIC;
  for (int i = 0; i < 4; ++i) md4[i] = static_cast<char>((magic >> (24 - 8 * i)) & 0xff);

  ContentClient content(context_, Content(), kRepo);
  FetchStats stats;
  Status refused =
      content.FetchDelta("big.bin", Sha256Of(target_), md4, dir_ / "delta", target_.size(), &stats);
  EXPECT_EQ(refused.code(), Status::Code::kRejected) << refused.ToString();
  EXPECT_NE(refused.message().find("MD4"), std::string::npos) << refused.message();
  EXPECT_TRUE(ScratchFiles().empty());

  // The untouched signature works on the same client: the refusal is the magic.
  Status ok = content.FetchDelta("big.bin", Sha256Of(target_), signature_, dir_ / "delta",
                                 target_.size(), &stats);
  EXPECT_TRUE(ok.ok()) << ok.ToString();
}

}  // namespace
}  // namespace mirrorcast::testing
