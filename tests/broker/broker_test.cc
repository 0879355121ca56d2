// A real Broker in-process on 127.0.0.1 port 0, driven through the real
// clients (ControlClient, ContentClient): publishes accepted and refused, the
// event log, ACKs in the status reply, and the content socket's files,
// manifests and deltas (with its path and signature defences). Files are
// served by the SHA-256 of a published version only: never a file the tree
// holds without a publish, never one changed since its publish, never
// anything through a symlink; superseded versions come from the retained
// store for --keep-versions serials.
#include "broker/broker.h"

#include "broker/manifest_store.h"

#include <gtest/gtest.h>
#include <librsync.h>

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/delta/delta.h"
#include "core/fs/atomic.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/messages.h"
#include "core/store/sqlite.h"
#include "core/wire/envelope.h"
#include "tests/support/entries.h"
#include "tests/support/fake_clock.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

constexpr milliseconds kTimeout{5000};
constexpr const char* kRepo = "main";

// FileEntryOf's default mtime: files put into the tree get it, so the
// entries tests build match the tree as a publisher's scan would.
constexpr int64_t kMtime = 1700000000;

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
    options.insecure_plaintext = true;  // the CURVE path: tests/broker/curve_test.cc
    options_ = options;
    broker_ = std::make_unique<Broker>(options);
    Status started = broker_->Start();
    ASSERT_TRUE(started.ok()) << started.ToString();
    ASSERT_NE(broker_->control_port(), 0);
  }

  void TearDown() override {
    if (broker_) broker_->Stop();
  }

  // Starts a broker again with `options_` (after changing them).
  void Restart() {
    if (broker_) broker_->Stop();
    broker_ = std::make_unique<Broker>(options_);
    Status started = broker_->Start();
    ASSERT_TRUE(started.ok()) << started.ToString();
  }

  // Puts `content` at `path` of the repo's tree as release tooling does
  // (a new file renamed over the old one), with the mtime FileEntryOf
  // records, and returns the entry a publisher would sign for it.
  v1::FileEntry PutFile(const std::string& path, const std::string& content,
                        const std::string& repo = kRepo) {
    const fs::path file = dir_ / "tree" / repo / path;
    const fs::path tmp = file.string() + ".new";
    WriteFile(tmp, content);
    EXPECT_TRUE(SetModeAndMtime(tmp, 0644, kMtime).ok());
    fs::rename(tmp, file);
    return FileEntryOf(path, content);
  }

  // Rewrites the bytes of `path` in place (same inode, same size).
  void OverwriteInPlace(const std::string& path, const std::string& content) {
    std::fstream f(dir_ / "tree" / kRepo / path, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f);
    f.write(content.data(), static_cast<std::streamsize>(content.size()));
  }

  // The manifest of serial 1 used by most tests, its files in the tree.
  Manifest FirstManifest() {
    Manifest m(kRepo, 1);
    m.Put(DirEntryOf("pool"));
    m.Put(PutFile("pool/a.rpm", "package a"));
    m.Put(PutFile("repomd.xml", "<repomd/>"));
    return m;
  }

  // Fetches version `content` of `path` whole; its bytes on success.
  Result<std::string> Fetch(const std::string& path, const std::string& content,
                            const std::string& repo = kRepo) {
    ContentClient client(context_, Content(), repo, FastClient());
    FetchStats stats;
    const fs::path dest = dir_ / ("got-" + std::to_string(next_fetch_++));
    Status s =
        client.FetchFiles({FileFetch{path, content.size(), Sha256Of(content), dest}}, &stats);
    if (!s.ok()) return s;
    return ReadFile(dest);
  }

  // One content request on `dealer` and its reply (empty if none came).
  static v1::ContentReply Call(zmq::socket_t& dealer, const v1::ContentRequest& request) {
    zmq::message_t frame = ToFrame(request);
    EXPECT_TRUE(dealer.send(frame, zmq::send_flags::none));
    zmq::pollitem_t item{static_cast<void*>(dealer), 0, ZMQ_POLLIN, 0};
    EXPECT_EQ(zmq::poll(&item, 1, kTimeout), 1);
    v1::ContentReply reply;
    zmq::message_t got;
    if (dealer.recv(got, zmq::recv_flags::dontwait)) {
      EXPECT_TRUE(reply.ParseFromArray(got.data(), static_cast<int>(got.size())));
    }
    return reply;
  }

  // The fetched bytes, or the refusal (so a failed expectation shows why).
  static std::string Got(const Result<std::string>& fetched) {
    return fetched.ok() ? *fetched : "<refused: " + fetched.status().ToString() + ">";
  }

  static ContentClientOptions FastClient() {
    ContentClientOptions o;
    o.stall_timeout = kTimeout;
    return o;
  }

  // Retained objects of kRepo on disk.
  size_t ObjectFiles() {
    size_t n = 0;
    const fs::path dir = dir_ / "state/objects" / kRepo;
    if (!fs::exists(dir)) return 0;
    for (const auto& e : fs::recursive_directory_iterator(dir)) n += e.is_regular_file() ? 1 : 0;
    return n;
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
  int next_fetch_ = 0;
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
  second.Put(PutFile("pool/a.rpm", "package a, rebuilt"));
  second.Put(PutFile("pool/b.rpm", "package b"));
  second.Erase("repomd.xml");
  fs::remove(dir_ / "tree/main/repomd.xml");
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
  second.Put(PutFile("pool/b.rpm", "package b"));
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

  // A serial the broker never published is refused, and so is a target.
  ack.set_mirror_id("mirror-a");
  ack.set_serial(999);
  refused = control.SendAck(ack, kTimeout);
  EXPECT_EQ(refused.code(), Status::Code::kRejected) << refused.ToString();
  EXPECT_NE(refused.message().find("serial 999 is above the broker's latest serial 1"),
            std::string::npos)
      << refused.message();
  ack.set_serial(1);
  ack.set_target_serial(5);
  EXPECT_EQ(control.SendAck(ack, kTimeout).code(), Status::Code::kRejected);
  status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->mirrors(0).serial(), 1u);
  EXPECT_EQ(status->mirrors(0).target_serial(), 1u);
}

TEST(EscapeForLogTest, ControlCharactersAndLongTextCannotForgeALogLine) {
  EXPECT_EQ(EscapeForLog("ok text"), "ok text");
  EXPECT_EQ(EscapeForLog("x\npublished repo=demo serial=77"),
            "x\\x0apublished repo=demo serial=77");
  EXPECT_EQ(EscapeForLog("back\\slash\x7f\xff"), "back\\x5cslash\\x7f\\xff");
  EXPECT_EQ(EscapeForLog(std::string(300, 'a')), std::string(256, 'a') + "...");
}

TEST_F(BrokerTest, ContentServesPublishedFilesByTheirSha256) {
  const std::string data = RandomBytes(300000, 1);  // more than one 256 KiB chunk
  Manifest manifest(kRepo, 1);
  manifest.Put(DirEntryOf("pool"));
  manifest.Put(PutFile("pool/a.rpm", data));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), manifest).ok());
  ContentClient content(context_, Content(), kRepo);
  FetchStats stats;
  Status fetched = content.FetchFiles(
      {FileFetch{"pool/a.rpm", data.size(), Sha256Of(data), dir_ / "got"}}, &stats);
  ASSERT_TRUE(fetched.ok()) << fetched.ToString();
  EXPECT_EQ(ReadFile(dir_ / "got"), data);
  EXPECT_EQ(stats.bytes_fetched, data.size());
  EXPECT_EQ(stats.files_fetched, 1u);

  // A fetch that names no version is not even sent.
  Status unnamed =
      content.FetchFiles({FileFetch{"pool/a.rpm", data.size(), "", dir_ / "x"}}, &stats);
  EXPECT_EQ(unnamed.code(), Status::Code::kInvalidArgument) << unnamed.ToString();
}

TEST_F(BrokerTest, FileAddedToTheTreeWithoutAPublishIsNeverServed) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  // Written after the last publish: the client even knows its SHA-256.
  PutFile("pool/unpublished.rpm", "written after the last publish");
  auto added = Fetch("pool/unpublished.rpm", "written after the last publish");
  ASSERT_FALSE(added.ok()) << "served a file no manifest names";
  EXPECT_EQ(added.status().code(), Status::Code::kRejected) << added.status().ToString();
  EXPECT_NE(added.status().message().find("not a version any published manifest of main names"),
            std::string::npos)
      << added.status().message();

  // A published path replaced by a version not yet published: the new bytes
  // are refused, the published version is still served (retained store).
  PutFile("pool/a.rpm", "package a, not published yet");
  auto unpublished = Fetch("pool/a.rpm", "package a, not published yet");
  ASSERT_FALSE(unpublished.ok());
  EXPECT_NE(unpublished.status().message().find("not a version any published manifest"),
            std::string::npos)
      << unpublished.status().message();
  auto published = Fetch("pool/a.rpm", "package a");
  ASSERT_TRUE(published.ok()) << published.status().ToString();
  EXPECT_EQ(*published, "package a");
}

TEST_F(BrokerTest, FileChangedInPlaceAfterItsPublishIsNeverServed) {
  const std::string original = RandomBytes(200000, 5);
  Manifest manifest(kRepo, 1);
  manifest.Put(PutFile("big.bin", original));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), manifest).ok());
  ASSERT_TRUE(Fetch("big.bin", original).ok());

  // Same size, other bytes, same inode: a careless rewrite in place. The
  // retained object is that inode too, so it holds the new bytes as well.
  std::string edited = original;
  edited.replace(1000, 10, "0123456789");
  OverwriteInPlace("big.bin", edited);
  auto whole = Fetch("big.bin", original);
  ASSERT_FALSE(whole.ok()) << "served bytes that are not the published version";
  EXPECT_EQ(whole.status().code(), Status::Code::kRejected) << whole.status().ToString();
  EXPECT_NE(whole.status().message().find("changed since it was published"), std::string::npos)
      << whole.status().message();

  // Nor as a delta.
  WriteFile(dir_ / "basis", original.substr(0, 150000));
  auto signature = ComputeSignature(dir_ / "basis");
  ASSERT_TRUE(signature.ok()) << signature.status().ToString();
  ContentClient content(context_, Content(), kRepo, FastClient());
  FetchStats stats;
  Status delta = content.FetchDelta("big.bin", Sha256Of(original), *signature, dir_ / "delta",
                                    original.size(), &stats);
  EXPECT_EQ(delta.code(), Status::Code::kRejected) << delta.ToString();
  EXPECT_NE(delta.message().find("changed since it was published"), std::string::npos)
      << delta.message();

  // The edited bytes were never published either.
  auto as_edited = Fetch("big.bin", edited);
  ASSERT_FALSE(as_edited.ok());
  EXPECT_NE(as_edited.status().message().find("not a version any published manifest"),
            std::string::npos);
}

TEST_F(BrokerTest, FileChangedInPlaceIsRefusedWithoutARetainedStoreToo) {
  options_.keep_versions = 0;  // every byte comes from the tree
  Restart();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  EXPECT_EQ(ObjectFiles(), 0u);
  ASSERT_TRUE(Fetch("pool/a.rpm", "package a").ok());
  OverwriteInPlace("pool/a.rpm", "PACKAGE A");
  auto got = Fetch("pool/a.rpm", "package a");
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("changed since it was published"), std::string::npos)
      << got.status().message();
}

TEST_F(BrokerTest, SymlinkOutOfTheTreeIsNeverServed) {
  // Outside the tree, files a client would like to read.
  WriteFile(dir_ / "outside/repo/secret.txt", "outside the tree");
  ASSERT_TRUE(SetModeAndMtime(dir_ / "outside/repo/secret.txt", 0644, kMtime).ok());
  WriteFile(dir_ / "outside/dir/file.txt", "outside the repo");
  ASSERT_TRUE(SetModeAndMtime(dir_ / "outside/dir/file.txt", 0644, kMtime).ok());
  fs::create_directory_symlink(dir_ / "outside/repo", dir_ / "tree/evil");  // named like a repo
  fs::create_directory_symlink(dir_ / "outside/dir", dir_ / "tree/main/link");

  // Publishing what lies behind either symlink is refused...
  Manifest evil("evil", 1);
  evil.Put(FileEntryOf("secret.txt", "outside the tree"));
  auto refused_repo = SendPublish(Seal(EventFor(Manifest("evil", 0), evil), *key_));
  ASSERT_FALSE(refused_repo.ok());
  EXPECT_NE(refused_repo.status().message().find("repo directory evil is a symlink"),
            std::string::npos)
      << refused_repo.status().message();
  Manifest linked = FirstManifest();
  linked.Put(DirEntryOf("link"));
  linked.Put(FileEntryOf("link/file.txt", "outside the repo"));
  ExpectRefused(Publish(Manifest(kRepo, 0), linked), "main/link is a symlink", 0);

  // ...so nothing behind them is a published version: asked for by their
  // SHA-256, they are refused, and so is a path leaving the repo.
  EXPECT_EQ(Fetch("secret.txt", "outside the tree", "evil").status().code(),
            Status::Code::kRejected);
  EXPECT_EQ(Fetch("link/file.txt", "outside the repo").status().code(), Status::Code::kRejected);
  EXPECT_EQ(Fetch("../secret/file.txt", "outside the repo").status().code(),
            Status::Code::kRejected);
  EXPECT_FALSE(fs::exists(dir_ / "state/objects/evil"));
}

TEST_F(BrokerTest, RepoOrDirectorySwappedForASymlinkIsNeverFollowed) {
  options_.keep_versions = 0;  // no retained copies: every byte comes from the tree
  Restart();
  Manifest manifest(kRepo, 1);
  manifest.Put(DirEntryOf("pool"));
  manifest.Put(PutFile("pool/a.rpm", "package a"));
  manifest.Put(PutFile("top.rpm", "top"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), manifest).ok());
  ASSERT_TRUE(Fetch("pool/a.rpm", "package a").ok());

  // The very same inodes, now reached through a symlink: only the refusal to
  // follow symlinks stands between the request and them.
  fs::create_directories(dir_ / "outside");
  fs::rename(dir_ / "tree/main/pool", dir_ / "outside/pool");
  fs::create_directory_symlink(dir_ / "outside/pool", dir_ / "tree/main/pool");
  auto via_dir = Fetch("pool/a.rpm", "package a");
  ASSERT_FALSE(via_dir.ok());
  EXPECT_NE(via_dir.status().message().find("main/pool is a symlink"), std::string::npos)
      << via_dir.status().message();

  fs::rename(dir_ / "tree/main", dir_ / "outside/main");
  fs::create_directory_symlink(dir_ / "outside/main", dir_ / "tree/main");
  auto via_repo = Fetch("top.rpm", "top");
  ASSERT_FALSE(via_repo.ok());
  EXPECT_NE(via_repo.status().message().find("repo directory main is a symlink"), std::string::npos)
      << via_repo.status().message();
}

TEST_F(BrokerTest, SupersededVersionsComeFromTheRetainedStoreForKeepVersionsSerials) {
  options_.keep_versions = 2;
  Restart();
  Manifest s1(kRepo, 1);
  s1.Put(PutFile("a.rpm", "version 1"));
  s1.Put(PutFile("gone.rpm", "deleted at serial 2"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), s1).ok());
  EXPECT_EQ(ObjectFiles(), 2u);

  Manifest s2 = s1;
  s2.set_serial(2);
  s2.Put(PutFile("a.rpm", "version 2"));  // renamed over version 1
  s2.Erase("gone.rpm");
  fs::remove(dir_ / "tree/main/gone.rpm");
  auto reply = Publish(s1, s2);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();

  // The tree holds neither old version any more; the retained store does.
  auto v1 = Fetch("a.rpm", "version 1");
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_EQ(*v1, "version 1");
  auto gone = Fetch("gone.rpm", "deleted at serial 2");
  ASSERT_TRUE(gone.ok()) << gone.status().ToString();
  EXPECT_EQ(*gone, "deleted at serial 2");
  EXPECT_EQ(Got(Fetch("a.rpm", "version 2")), "version 2");

  // Retired at serial 2 with a window of 2: still served at head 3...
  Manifest s3 = s2;
  s3.set_serial(3);
  s3.Put(PutFile("b.rpm", "b"));
  ASSERT_TRUE(Publish(s2, s3).ok());
  EXPECT_TRUE(Fetch("a.rpm", "version 1").ok());

  // ...and gone at head 4, object and all.
  Manifest s4 = s3;
  s4.set_serial(4);
  s4.Put(PutFile("c.rpm", "c"));
  ASSERT_TRUE(Publish(s3, s4).ok());
  auto expired = Fetch("a.rpm", "version 1");
  ASSERT_FALSE(expired.ok());
  EXPECT_NE(expired.status().message().find("no longer kept"), std::string::npos)
      << expired.status().message();
  EXPECT_FALSE(Fetch("gone.rpm", "deleted at serial 2").ok());
  EXPECT_EQ(ObjectFiles(), 3u);  // version 2, b, c
  EXPECT_EQ(Got(Fetch("a.rpm", "version 2")), "version 2");
}

// A recall of `target` published on top of `head`: serial head + 1 with
// target's manifest, the change list leading back to it, and a reason.
v1::RepoChanged RecallEvent(const Manifest& head, Manifest target, uint64_t recall_of) {
  target.set_serial(head.serial() + 1);
  v1::RepoChanged event = EventFor(head, target);
  event.set_recall_of(recall_of);
  event.set_recall_reason("bad push");
  return event;
}

TEST_F(BrokerTest, RecallServesTheRecalledVersionsFromTheRetainedStore) {
  Manifest s1(kRepo, 1);
  s1.Put(PutFile("a.rpm", "version 1"));
  s1.Put(PutFile("gone.rpm", "deleted at serial 2"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), s1).ok());
  Manifest s2 = s1;
  s2.set_serial(2);
  s2.Put(PutFile("a.rpm", "version 2"));
  s2.Erase("gone.rpm");
  fs::remove(dir_ / "tree/main/gone.rpm");
  ASSERT_TRUE(Publish(s1, s2).ok());

  // The tree keeps version 2; the recall names version 1 and the deleted file.
  auto reply = SendPublish(Seal(RecallEvent(s2, s1, 1), *key_));
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(HelloSerial(), 3u);
  EXPECT_EQ(ReadFile(dir_ / "tree/main/a.rpm"), "version 2");
  EXPECT_EQ(Got(Fetch("a.rpm", "version 1")), "version 1");
  EXPECT_EQ(Got(Fetch("gone.rpm", "deleted at serial 2")), "deleted at serial 2");

  ControlClient control(context_, Control());
  auto status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  ASSERT_EQ(status->recalls_size(), 1);
  EXPECT_EQ(status->recalls(0).serial(), 3u);
  EXPECT_EQ(status->recalls(0).recall_of(), 1u);
  EXPECT_EQ(status->recalls(0).reason(), "bad push");
  EXPECT_EQ(status->recalls(0).key_id(), key_->public_key().key_id());
  auto hello = control.Hello("test", kTimeout);
  ASSERT_TRUE(hello.ok());
  ASSERT_EQ(hello->recall_windows_size(), 1);
  EXPECT_EQ(hello->recall_windows(0).head_recall().recall_of(), 1u);
  EXPECT_EQ(hello->recall_windows(0).oldest(), 1u);
  EXPECT_EQ(hello->recall_windows(0).newest(), 2u);

  // Current again: still served once serial 2's retirements have expired.
  Manifest s3 = s1;
  s3.set_serial(3);
  Manifest previous = s3;
  for (uint64_t serial = 4; serial <= 8; ++serial) {
    Manifest next = previous;
    next.set_serial(serial);
    next.Put(PutFile("n" + std::to_string(serial) + ".rpm", std::to_string(serial)));
    ASSERT_TRUE(Publish(previous, next).ok());
    previous = next;
  }
  EXPECT_EQ(Got(Fetch("a.rpm", "version 1")), "version 1");
  // The recall survives a restart.
  Restart();
  auto again = ControlClient(context_, Control()).GetStatus(kTimeout);
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->recalls_size(), 1);
  EXPECT_EQ(again->recalls(0).recall_of(), 1u);
}

TEST_F(BrokerTest, RecallOutsideTheWindowOrOfAnotherManifestIsRefused) {
  options_.keep_versions = 1;
  Restart();
  Manifest s1(kRepo, 1);
  s1.Put(PutFile("a.rpm", "version 1"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), s1).ok());
  Manifest s2 = s1;
  s2.set_serial(2);
  s2.Put(PutFile("a.rpm", "version 2"));
  ASSERT_TRUE(Publish(s1, s2).ok());
  Manifest s3 = s2;
  s3.set_serial(3);
  s3.Put(PutFile("a.rpm", "version 3"));
  ASSERT_TRUE(Publish(s2, s3).ok());

  ExpectRefused(SendPublish(Seal(RecallEvent(s3, s1, 1), *key_)),
                "serial 1 is outside the recall window of main: serials 2 to 2 can be recalled "
                "(the broker keeps replaced versions for 1 serials (--keep-versions))",
                3);
  // Serial 1's content claimed to be serial 2's.
  ExpectRefused(SendPublish(Seal(RecallEvent(s3, s1, 2), *key_)),
                "the recall does not carry serial 2's manifest", 3);
  // A recall is checked like any publish: signed by a trusted key, head + 1.
  auto rogue = SigningKey::Generate();
  ASSERT_TRUE(rogue.ok());
  ExpectRefused(SendPublish(Seal(RecallEvent(s3, s2, 2), *rogue)), "unknown signing key", 3);
  v1::RepoChanged stale = RecallEvent(s3, s2, 2);
  stale.set_serial(5);
  ExpectRefused(SendPublish(Seal(stale, *key_)), "serial conflict", 3);
  ControlClient control(context_, Control());
  auto status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->recalls_size(), 0);
  // Within the window it goes through.
  auto reply = SendPublish(Seal(RecallEvent(s3, s2, 2), *key_));
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(Got(Fetch("a.rpm", "version 2")), "version 2");
}

TEST_F(BrokerTest, RecallOfAVersionNoLongerServableIsRefused) {
  Manifest s1(kRepo, 1);
  s1.Put(PutFile("a.rpm", "version 1"));
  s1.Put(PutFile("b.rpm", "stays"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), s1).ok());
  // Edited in place: the retained object is the same inode, so version 1's
  // bytes are gone everywhere.
  OverwriteInPlace("a.rpm", "version 2");
  ASSERT_TRUE(SetModeAndMtime(dir_ / "tree/main/a.rpm", 0644, kMtime + 1).ok());
  Manifest s2 = s1;
  s2.set_serial(2);
  v1::FileEntry edited = FileEntryOf("a.rpm", "version 2");
  edited.set_mtime(kMtime + 1);
  s2.Put(edited);
  ASSERT_TRUE(Publish(s1, s2).ok());

  ExpectRefused(SendPublish(Seal(RecallEvent(s2, s1, 1), *key_)), "cannot recall serial 1: a.rpm",
                2);
}

// A stop right after a start (the content workers not yet waiting) once
// lost the workers' wake-up and hung for ever.
TEST_F(BrokerTest, StopsAtOnceEvenRightAfterStarting) {
  // A hang shows as the test's timeout.
  for (int i = 0; i < 20; ++i) {
    Restart();
    ASSERT_FALSE(HasFatalFailure()) << "cycle " << i;
  }
}

TEST_F(BrokerTest, VersionStillNamedByTheHeadIsNeverPruned) {
  options_.keep_versions = 1;
  Restart();
  Manifest s1(kRepo, 1);
  s1.Put(DirEntryOf("x"));
  s1.Put(DirEntryOf("y"));
  s1.Put(PutFile("x/one.rpm", "shared bytes"));
  s1.Put(PutFile("y/two.rpm", "shared bytes"));
  s1.Put(PutFile("unchanged.rpm", "never touched"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), s1).ok());

  // One of the two paths goes; then the tree moves on for a few serials.
  Manifest previous = s1;
  Manifest next = s1;
  next.set_serial(2);
  next.Erase("x/one.rpm");
  fs::remove(dir_ / "tree/main/x/one.rpm");
  ASSERT_TRUE(Publish(previous, next).ok());
  for (uint64_t serial = 3; serial <= 5; ++serial) {
    previous = next;
    next.set_serial(serial);
    next.Put(PutFile("n" + std::to_string(serial) + ".rpm", std::to_string(serial)));
    ASSERT_TRUE(Publish(previous, next).ok());
  }
  // The tree no longer holds the shared version at y/two.rpm either (a new
  // inode with the same bytes): it comes from its object, never pruned.
  PutFile("y/two.rpm", "shared bytes");
  EXPECT_EQ(Got(Fetch("y/two.rpm", "shared bytes")), "shared bytes");
  EXPECT_EQ(Got(Fetch("x/one.rpm", "shared bytes")), "shared bytes");  // same version
  EXPECT_EQ(Got(Fetch("unchanged.rpm", "never touched")), "never touched");
}

TEST_F(BrokerTest, PublishIsRefusedUnlessEveryNewFileIsInTheTreeAsSigned) {
  // Missing from the tree.
  Manifest missing(kRepo, 1);
  missing.Put(PutFile("a-ok.rpm", "fine"));
  missing.Put(FileEntryOf("missing.rpm", "never written"));
  ExpectRefused(Publish(Manifest(kRepo, 0), missing), "missing.rpm is not in the tree as signed",
                0);

  // Another size than signed.
  PutFile("short.rpm", "abc");
  Manifest short_file(kRepo, 1);
  short_file.Put(FileEntryOf("a-ok.rpm", "fine"));
  short_file.Put(FileEntryOf("short.rpm", "abcdef"));
  ExpectRefused(Publish(Manifest(kRepo, 0), short_file),
                "short.rpm has 3 bytes in the tree, the signed size is 6", 0);

  // Rewritten after the publisher's scan (same size, newer mtime).
  PutFile("late.rpm", "12345");
  ASSERT_TRUE(SetModeAndMtime(dir_ / "tree/main/late.rpm", 0644, kMtime + 60).ok());
  Manifest late(kRepo, 1);
  late.Put(FileEntryOf("a-ok.rpm", "fine"));
  late.Put(FileEntryOf("late.rpm", "12345"));
  ExpectRefused(Publish(Manifest(kRepo, 0), late),
                "late.rpm changed after the publisher scanned it", 0);

  // A refused publish keeps nothing it linked for a file checked before the bad one.
  EXPECT_EQ(ObjectFiles(), 0u);
  EXPECT_FALSE(Fetch("a-ok.rpm", "fine").ok());

  Manifest good(kRepo, 1);
  good.Put(FileEntryOf("a-ok.rpm", "fine"));
  good.Put(PutFile("late.rpm", "12345"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), good).ok());
  EXPECT_EQ(Got(Fetch("a-ok.rpm", "fine")), "fine");
}

// A large publish records its files in batches and stages their version
// rows as it goes; what lands must be what one batch would have written, and
// a refusal after some batches were staged must leave nothing behind.
TEST_F(BrokerTest, PublishRecordedInBatchesLandsWholeOrNotAtAll) {
  options_.keep_versions = 2;
  options_.record_batch_files = 3;
  options_.stage_version_rows = 4;
  Restart();
  Manifest s1(kRepo, 1);
  for (int i = 0; i < 20; ++i) {
    // Every fifth file has the bytes of file 0: the same version in several batches.
    const std::string bytes = i % 5 == 0 ? "shared" : "file " + std::to_string(i);
    s1.Put(PutFile("f" + std::to_string(100 + i) + ".rpm", bytes));
  }
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), s1).ok());
  EXPECT_EQ(ObjectFiles(), 17u);  // 16 distinct contents + "shared" once
  for (int i = 0; i < 20; ++i) {
    const std::string bytes = i % 5 == 0 ? "shared" : "file " + std::to_string(i);
    EXPECT_EQ(Got(Fetch("f" + std::to_string(100 + i) + ".rpm", bytes)), bytes) << i;
  }

  // Ten replaced and five deleted: retirements are staged too.
  Manifest s2 = s1;
  s2.set_serial(2);
  for (int i = 1; i <= 10; ++i) {
    if (i % 5 == 0) continue;
    s2.Put(PutFile("f" + std::to_string(100 + i) + ".rpm", "new " + std::to_string(i)));
  }
  for (int i = 11; i <= 15; ++i) {
    s2.Erase("f" + std::to_string(100 + i) + ".rpm");
    fs::remove(dir_ / "tree/main" / ("f" + std::to_string(100 + i) + ".rpm"));
  }
  ASSERT_TRUE(Publish(s1, s2).ok());
  EXPECT_EQ(Got(Fetch("f101.rpm", "file 1")), "file 1");  // superseded, retained
  EXPECT_EQ(Got(Fetch("f101.rpm", "new 1")), "new 1");
  EXPECT_EQ(Got(Fetch("f112.rpm", "file 12")), "file 12");  // deleted, retained
  EXPECT_EQ(Got(Fetch("f115.rpm", "shared")), "shared");    // still named at f100.rpm

  // A publish refused at its last file, after several batches were staged.
  const size_t objects_before = ObjectFiles();
  Manifest bad = s2;
  bad.set_serial(3);
  for (int i = 0; i < 12; ++i)
    bad.Put(PutFile("g" + std::to_string(100 + i) + ".rpm", "g" + std::to_string(i)));
  bad.Put(FileEntryOf("zz-missing.rpm", "never written"));
  ExpectRefused(Publish(s2, bad), "zz-missing.rpm is not in the tree as signed", 2);
  EXPECT_EQ(ObjectFiles(), objects_before);
  EXPECT_FALSE(Fetch("g100.rpm", "g0").ok());

  // Nothing staged by the refused publish leaks into the next one.
  Manifest s3 = s2;
  s3.set_serial(3);
  s3.Put(FileEntryOf("g100.rpm", "g0"));
  ASSERT_TRUE(Publish(s2, s3).ok());
  EXPECT_EQ(Got(Fetch("g100.rpm", "g0")), "g0");
  EXPECT_FALSE(Fetch("g101.rpm", "g1").ok());
  EXPECT_EQ(ObjectFiles(), objects_before + 1);
}

// Links past what one publish reply carries are kept for the publisher to
// page through, in path order, until the repo's next publish.
TEST_F(BrokerTest, LinkedFilesPastTheReplyComeInPages) {
  options_.linked_per_reply = 2;
  options_.stage_version_rows = 3;  // some of them staged on the way
  options_.record_batch_files = 2;
  Restart();
  Manifest s1(kRepo, 1);
  for (int i = 0; i < 5; ++i) s1.Put(PutFile("p" + std::to_string(i) + ".rpm", std::to_string(i)));
  auto reply = Publish(Manifest(kRepo, 0), s1);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  ASSERT_EQ(reply->publish().linked_size(), 2);
  EXPECT_EQ(reply->publish().linked(1).path(), "p1.rpm");
  EXPECT_TRUE(reply->publish().linked_more());

  auto page = [&](uint64_t serial, const std::string& after) {
    ControlClient control(context_, Control());
    v1::ControlRequest request;
    request.mutable_linked()->set_repo(kRepo);
    request.mutable_linked()->set_serial(serial);
    request.mutable_linked()->set_after_path(after);
    return control.Call(std::move(request), kTimeout);
  };
  std::vector<std::string> paths;
  std::string after = "p1.rpm";
  for (int pages = 0; pages < 5; ++pages) {
    auto got = page(1, after);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    for (const auto& f : got->linked().linked()) {
      paths.push_back(f.path());
      struct stat st {};
      ASSERT_EQ(::stat((dir_ / "tree/main" / f.path()).c_str(), &st), 0);
      EXPECT_EQ(f.inode(), st.st_ino);
      EXPECT_EQ(f.ctime_after_ns(), st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec);
    }
    if (!got->linked().more()) break;
    after = paths.back();
  }
  EXPECT_EQ(paths, (std::vector<std::string>{"p2.rpm", "p3.rpm", "p4.rpm"}));
  auto other_serial = page(7, "");
  ASSERT_TRUE(other_serial.ok());
  EXPECT_EQ(other_serial->linked().linked_size(), 0);

  // The next publish drops them.
  Manifest s2 = s1;
  s2.set_serial(2);
  s2.Put(PutFile("q.rpm", "q"));
  ASSERT_TRUE(Publish(s1, s2).ok());
  auto gone = page(1, "");
  ASSERT_TRUE(gone.ok());
  EXPECT_EQ(gone->linked().linked_size(), 0);
  EXPECT_FALSE(gone->linked().more());
}

TEST_F(BrokerTest, HostileContentRequestsGetAClearEscapedRefusal) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  zmq::socket_t dealer(context_, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect(Content().Endpoint());
  auto ask = [&](const std::string& path, const std::string& sha256) -> v1::ContentReply {
    v1::ContentRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(7);
    request.set_repo(kRepo);
    request.mutable_range()->set_path(path);
    request.mutable_range()->set_sha256(sha256);
    request.mutable_range()->set_length(1024);
    return Call(dealer, request);
  };
  auto printable = [](const std::string& text) {
    return std::all_of(text.begin(), text.end(),
                       [](char c) { return static_cast<unsigned char>(c) >= 0x20; });
  };

  // No version named, and a control character in the path.
  v1::ContentReply unnamed = ask("pool/a\x01.rpm", "");
  EXPECT_FALSE(unnamed.ok());
  EXPECT_NE(unnamed.error().find("requested by the SHA-256"), std::string::npos) << unnamed.error();
  EXPECT_NE(unnamed.error().find("pool/a\\x01.rpm"), std::string::npos) << unnamed.error();
  EXPECT_TRUE(printable(unnamed.error())) << unnamed.error();

  // A digest of the wrong length, and one nobody published.
  EXPECT_NE(ask("pool/a.rpm", "short").error().find("requested by the SHA-256"), std::string::npos);
  v1::ContentReply unknown = ask("pool/a.rpm", Sha256Of("never published"));
  EXPECT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().find("not a version any published manifest"), std::string::npos)
      << unknown.error();
  EXPECT_TRUE(unknown.data().empty());

  // The same socket still gets the published version.
  v1::ContentReply good = ask("pool/a.rpm", Sha256Of("package a"));
  EXPECT_TRUE(good.ok()) << good.error();
  EXPECT_EQ(good.data(), "package a");
}

TEST_F(BrokerTest, BatchedRequestAnswersEachRangeAsItsOwnRequestWould) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  zmq::socket_t dealer(context_, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect(Content().Endpoint());
  auto ask = [&](const std::vector<std::pair<std::string, std::string>>& ranges) {
    v1::ContentRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(9);
    request.set_repo(kRepo);
    for (const auto& [path, sha256] : ranges) {
      auto* r = request.mutable_ranges()->add_ranges();
      r->set_path(path);
      r->set_sha256(sha256);
      r->set_length(64);
    }
    return Call(dealer, request);
  };
  // A published file, a version nobody published, an index root.
  v1::ContentReply reply = ask({{"pool/a.rpm", Sha256Of("package a")},
                                {"pool/a.rpm", Sha256Of("never published")},
                                {"repomd.xml", Sha256Of("<repomd/>")}});
  ASSERT_TRUE(reply.ok()) << reply.error();
  ASSERT_EQ(reply.parts_size(), 3);
  EXPECT_TRUE(reply.parts(0).ok());
  EXPECT_EQ(reply.parts(0).data(), "package a");
  EXPECT_EQ(reply.parts(0).total_size(), 9u);
  EXPECT_FALSE(reply.parts(1).ok());
  EXPECT_TRUE(reply.parts(1).data().empty());
  EXPECT_NE(reply.parts(1).error().find("not a version any published manifest"), std::string::npos)
      << reply.parts(1).error();
  EXPECT_TRUE(reply.parts(2).ok());
  EXPECT_EQ(reply.parts(2).data(), "<repomd/>");

  // More ranges than a batch may hold: refused whole, nothing read.
  std::vector<std::pair<std::string, std::string>> many(kMaxBatchRanges + 1,
                                                        {"pool/a.rpm", Sha256Of("package a")});
  v1::ContentReply refused = ask(many);
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(refused.parts_size(), 0);

  // The client fetches small files several to a request, each verified.
  ContentClient client(context_, Content(), kRepo, FastClient());
  FetchStats stats;
  Status fetched =
      client.FetchFiles({FileFetch{"pool/a.rpm", 9, Sha256Of("package a"), dir_ / "batch-a"},
                         FileFetch{"repomd.xml", 9, Sha256Of("<repomd/>"), dir_ / "batch-r"}},
                        &stats);
  ASSERT_TRUE(fetched.ok()) << fetched.ToString();
  EXPECT_EQ(ReadFile(dir_ / "batch-a"), "package a");
  EXPECT_EQ(ReadFile(dir_ / "batch-r"), "<repomd/>");
  EXPECT_EQ(stats.files_fetched, 2u);
  EXPECT_EQ(stats.bytes_fetched, 18u);
}

// A content server that predates RangesRequest: it answers a batch with
// "empty content request" and serves single ranges, counting both.
TEST(ContentClientFallback, ABrokerWithoutBatchesGetsOneRangePerRequest) {
  zmq::context_t context;
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.bind("tcp://127.0.0.1:*");
  const std::string endpoint = router.get(zmq::sockopt::last_endpoint);
  const uint16_t port = static_cast<uint16_t>(std::stoi(endpoint.substr(endpoint.rfind(':') + 1)));
  const std::map<std::string, std::string> files = {
      {"a", "first file"}, {"b", "second"}, {"c", "third one"}};
  std::map<std::string, std::string> by_sha;
  for (const auto& [path, content] : files) by_sha[Sha256Of(content)] = content;
  int batches = 0, singles = 0;
  std::atomic<bool> stop{false};
  std::thread server([&] {
    while (!stop) {
      zmq::pollitem_t item{static_cast<void*>(router), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&item, 1, std::chrono::milliseconds(50)) <= 0) continue;
      zmq::message_t id, body;
      if (!router.recv(id) || !router.recv(body)) continue;
      v1::ContentRequest request;
      request.ParseFromArray(body.data(), static_cast<int>(body.size()));
      v1::ContentReply reply;
      reply.set_protocol_version(kProtocolVersion);
      reply.set_request_id(request.request_id());
      if (request.has_range()) {
        ++singles;
        const std::string& content = by_sha[request.range().sha256()];
        reply.set_ok(true);
        reply.set_total_size(content.size());
        reply.set_offset(request.range().offset());
        reply.set_data(content.substr(request.range().offset(), request.range().length()));
      } else {
        ++batches;
        reply.set_error("empty content request");
      }
      zmq::message_t out = ToFrame(reply);
      router.send(id, zmq::send_flags::sndmore);
      router.send(out, zmq::send_flags::none);
    }
  });
  TempDir dir("mirrorcast-fallback");
  ContentClientOptions options;
  options.stall_timeout = std::chrono::milliseconds(5000);
  ContentClient client(context, HostPort{"127.0.0.1", port}, "main", options);
  std::vector<FileFetch> fetches;
  for (const auto& [path, content] : files) {
    fetches.push_back(FileFetch{path, content.size(), Sha256Of(content), dir.path() / path});
  }
  FetchStats stats;
  Status s = client.FetchFiles(fetches, &stats);
  // Once refused, the client does not ask for batches again.
  Status again = client.FetchFiles(fetches, &stats);
  stop = true;
  server.join();
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(again.ok()) << again.ToString();
  for (const auto& [path, content] : files) EXPECT_EQ(ReadFile(dir.path() / path), content);
  EXPECT_EQ(batches, 1);
  EXPECT_EQ(singles, 6);
}

TEST_F(BrokerTest, ObjectsOfAPublishThatNeverCommittedAreRemovedAtStart) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  broker_->Stop();
  broker_.reset();
  // As a crash between linking and committing leaves it.
  const std::string sha = Sha256Of("linked, never committed");
  {
    auto state = BrokerState::Open(dir_ / "state");
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    ASSERT_TRUE((*state)->AddPendingObjects(kRepo, {sha}).ok());
  }
  const fs::path orphan = ObjectStore(dir_ / "state/objects").PathOf(kRepo, sha);
  WriteFile(orphan, "linked, never committed");
  const size_t before = ObjectFiles();

  Restart();
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_EQ(ObjectFiles(), before - 1);  // the committed objects stay
  EXPECT_EQ(Got(Fetch("pool/a.rpm", "package a")), "package a");
}

// A state that 0.1 wrote names its heads by format-v1 digests: the broker
// refuses to start on it rather than publish on top of what it cannot read.
TEST_F(BrokerTest, StateWrittenByFormatOneIsRefusedWithAClearMessage) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  broker_->Stop();
  broker_.reset();
  {
    auto db = Database::Open(dir_ / "state/broker.db");
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("PRAGMA user_version = 0").ok());
  }
  Broker old(options_);
  Status started = old.Start();
  ASSERT_FALSE(started.ok());
  EXPECT_NE(started.message().find("written by mirrorcast 0.1"), std::string::npos)
      << started.ToString();
  EXPECT_NE(started.message().find("move it aside"), std::string::npos) << started.ToString();
  old.Stop();

  // An empty state of any age is fine.
  fs::remove_all(dir_ / "state");
  Restart();
  EXPECT_EQ(HelloSerial(), 0u);
}

// The state directory on another filesystem than the tree: no hard links,
// and tmpfs has no reflinks either, so only current versions are served.
TEST_F(BrokerTest, StateOnAnotherFilesystemServesOnlyCurrentVersions) {
  struct stat tree_st {
  }, shm_st{};
  if (::stat("/dev/shm", &shm_st) != 0 || ::stat(dir_.path().c_str(), &tree_st) != 0 ||
      shm_st.st_dev == tree_st.st_dev) {
    GTEST_SKIP() << "needs /dev/shm on a filesystem other than " << dir_.path();
  }
  char pattern[] = "/dev/shm/mirrorcast-state-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{pattern};
  options_.state_dir = cleanup.dir;
  Restart();

  Manifest s1(kRepo, 1);
  s1.Put(PutFile("a.rpm", "version 1"));
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), s1).ok());
  EXPECT_EQ(Got(Fetch("a.rpm", "version 1")), "version 1");  // from the tree

  Manifest s2 = s1;
  s2.set_serial(2);
  s2.Put(PutFile("a.rpm", "version 2"));
  ASSERT_TRUE(Publish(s1, s2).ok());
  auto old = Fetch("a.rpm", "version 1");
  ASSERT_FALSE(old.ok());
  EXPECT_NE(old.status().message().find("superseded in the tree and no retained copy"),
            std::string::npos)
      << old.status().message();
  EXPECT_EQ(Got(Fetch("a.rpm", "version 2")), "version 2");
  size_t objects = 0;
  for (const auto& e : fs::recursive_directory_iterator(cleanup.dir / "objects")) {
    objects += e.is_regular_file() ? 1 : 0;
  }
  EXPECT_EQ(objects, 0u);
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
    first_ = Manifest(kRepo, 1);
    first_.Put(PutFile("big.bin", target_));
    auto published = Publish(Manifest(kRepo, 0), first_);
    ASSERT_TRUE(published.ok()) << published.status().ToString();
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

  Manifest first_;
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

TEST_F(BrokerDeltaTest, DeltaOfASupersededVersionComesFromTheRetainedStore) {
  Manifest second = first_;
  second.set_serial(2);
  second.Put(PutFile("big.bin", RandomBytes(400000, 4)));  // renamed over the first
  ASSERT_TRUE(Publish(first_, second).ok());
  ContentClient content(context_, Content(), kRepo, FastClient());
  FetchStats stats;
  Status s = content.FetchDelta("big.bin", Sha256Of(target_), signature_, dir_ / "delta",
                                target_.size(), &stats);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::string rebuilt_sha;
  ASSERT_TRUE(
      ApplyDelta(dir_ / "basis", dir_ / "delta", dir_ / "rebuilt", target_.size(), &rebuilt_sha)
          .ok());
  EXPECT_EQ(rebuilt_sha, Sha256Of(target_));
}

// Liveness, lag and propagation (the status page's data), on a fake clock.
class BrokerStatusTest : public BrokerTest {
 protected:
  void SetUp() override {
    BrokerTest::SetUp();
    options_.clock = &clock_;
    options_.silent_after_seconds = 60;
    Restart();
  }

  // A mirror's poll, as mirrorcast-subscriber sends it.
  void Poll(const std::string& mirror, uint64_t serial, const std::string& instance = "i1",
            const std::string& repo = kRepo) {
    v1::HelloRequest hello;
    hello.set_client("subscriber " + mirror);
    hello.set_mirror_id(mirror);
    hello.set_repo(repo);
    hello.set_serial(serial);
    hello.set_instance(instance);
    ControlClient control(context_, Control());
    ASSERT_TRUE(control.Hello(hello, kTimeout).ok());
  }
  void Ack(const std::string& mirror, uint64_t serial, v1::AckState state = v1::ACK_APPLIED,
           const std::string& error = "") {
    v1::Ack ack;
    ack.set_mirror_id(mirror);
    ack.set_repo(kRepo);
    ack.set_serial(serial);
    ack.set_target_serial(serial);
    ack.set_state(state);
    ack.set_error(error);
    ControlClient control(context_, Control());
    Status sent = control.SendAck(ack, kTimeout);
    ASSERT_TRUE(sent.ok()) << sent.ToString();
  }
  v1::StatusReply GetStatus() {
    ControlClient control(context_, Control());
    auto status = control.GetStatus(kTimeout);
    EXPECT_TRUE(status.ok()) << status.status().ToString();
    return status.ok() ? *status : v1::StatusReply();
  }
  static const v1::MirrorStatus* Find(const v1::StatusReply& s, const std::string& id) {
    for (const auto& m : s.mirrors()) {
      if (m.mirror_id() == id) return &m;
    }
    return nullptr;
  }
  // Serial n of the repo, one file changed from serial n - 1.
  Manifest Next(const Manifest& from) {
    Manifest to = from;
    to.set_serial(from.serial() + 1);
    to.Put(PutFile("pool/a.rpm", "package a, build " + std::to_string(to.serial())));
    EXPECT_TRUE(Publish(from, to).ok());
    return to;
  }

  FakeClock clock_{Clock::Real().NowUnix()};
};

TEST_F(BrokerStatusTest, APollIsLivenessAndAMirrorNotHeardFromGoesSilent) {
  const Manifest first = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  Poll("m-poll", 1);
  v1::StatusReply s = GetStatus();
  ASSERT_NE(Find(s, "m-poll"), nullptr) << s.DebugString();
  EXPECT_EQ(Find(s, "m-poll")->last_seen_unix(), clock_.NowUnix());
  EXPECT_EQ(Find(s, "m-poll")->health(), "applied");
  EXPECT_EQ(s.silent_after_seconds(), 60);

  clock_.Advance(std::chrono::seconds(59));
  EXPECT_EQ(Find(GetStatus(), "m-poll")->health(), "applied");
  clock_.Advance(std::chrono::seconds(1));
  EXPECT_EQ(Find(GetStatus(), "m-poll")->health(), "silent");
  // It polls again: alive, and nothing was published, so no ACK came.
  Poll("m-poll", 1);
  s = GetStatus();
  EXPECT_EQ(Find(s, "m-poll")->health(), "applied");
  EXPECT_EQ(Find(s, "m-poll")->last_ack_unix(), 0);

  // Polls that are not a mirror's, or name no published repo, make no row.
  Poll("m-other-repo", 1, "i1", "nosuchrepo");
  ControlClient control(context_, Control());
  ASSERT_TRUE(control.Hello("a publisher", kTimeout).ok());
  EXPECT_EQ(GetStatus().mirrors_size(), 1);
  // A poll survives a restart of the broker (written in batches).
  Restart();
  s = GetStatus();
  ASSERT_NE(Find(s, "m-poll"), nullptr);
  EXPECT_EQ(Find(s, "m-poll")->last_seen_unix(), clock_.NowUnix());
}

TEST_F(BrokerStatusTest, LagAndPropagationFollowTheAcks) {
  const Manifest first = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  const int64_t published_1 = clock_.NowUnix();
  clock_.Advance(std::chrono::seconds(2));
  Ack("m1", 1);
  Ack("m2", 1);
  clock_.Advance(std::chrono::seconds(10));
  const Manifest second = Next(first);
  const int64_t published_2 = clock_.NowUnix();
  clock_.Advance(std::chrono::seconds(5));
  const Manifest third = Next(second);
  clock_.Advance(std::chrono::seconds(3));
  Ack("m2", 3);  // a catch-up over serials 2 and 3
  Ack("m3", 0, v1::ACK_FAILED, "no space left on device");

  const v1::StatusReply s = GetStatus();
  const v1::MirrorStatus* m1 = Find(s, "m1");
  const v1::MirrorStatus* m2 = Find(s, "m2");
  const v1::MirrorStatus* m3 = Find(s, "m3");
  ASSERT_TRUE(m1 && m2 && m3) << s.DebugString();
  EXPECT_EQ(m1->health(), "behind");
  EXPECT_EQ(m1->lag_serials(), 2u);
  EXPECT_EQ(m1->lag_seconds(), clock_.NowUnix() - published_2);
  EXPECT_EQ(m2->health(), "applied");
  EXPECT_EQ(m2->lag_serials(), 0u);
  EXPECT_EQ(m2->lag_seconds(), 0);
  EXPECT_EQ(m3->health(), "failed");
  EXPECT_EQ(m3->lag_serials(), 3u);
  EXPECT_EQ(m3->lag_seconds(), clock_.NowUnix() - published_1);

  ASSERT_EQ(s.repo_status_size(), 1);
  EXPECT_EQ(s.repo_status(0).serial(), 3u);
  EXPECT_EQ(s.repo_status(0).published_unix(), clock_.NowUnix() - 3);

  // Newest first: serial 3 reached by m2 after 3 s; 2 by m2 after 8 s; 1 by m1 and m2 after 2 s.
  ASSERT_EQ(s.propagation_size(), 3) << s.DebugString();
  std::map<uint64_t, std::vector<int64_t>> after;
  for (const auto& p : s.propagation()) {
    EXPECT_EQ(p.mirrors(), 3u);
    for (int64_t at : p.reached_ms()) after[p.serial()].push_back(at - p.published_ms());
  }
  EXPECT_EQ(s.propagation(0).serial(), 3u);
  EXPECT_EQ(after[1], (std::vector<int64_t>{2000, 2000}));
  EXPECT_EQ(after[2], (std::vector<int64_t>{8000}));
  EXPECT_EQ(after[3], (std::vector<int64_t>{3000}));
  (void)third;
}

TEST_F(BrokerStatusTest, TwoProcessesReportingAsOneMirrorAreWarnedAboutOnce) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  std::ostringstream log;
  InitLoggingTo(log, "test", boost::log::trivial::info, false);
  // A restart changes the instance once: no warning.
  Poll("m-dup", 1, "first-run");
  Poll("m-dup", 1, "second-run");
  Poll("m-dup", 1, "second-run");
  EXPECT_EQ(log.str().find("two subscriber processes"), std::string::npos) << log.str();
  // Two processes take turns.
  for (int i = 0; i < 4; ++i) Poll("m-dup", 1, i % 2 == 0 ? "first-run" : "second-run");
  InitLoggingTo(std::clog, "test", boost::log::trivial::info, false);
  const std::string text = log.str();
  const size_t at = text.find("two subscriber processes report as mirror m-dup");
  ASSERT_NE(at, std::string::npos) << text;
  EXPECT_EQ(text.find("two subscriber processes", at + 1), std::string::npos) << text;
  EXPECT_NE(text.find("give each its own --id"), std::string::npos) << text;
}

// A raw subscriber of kRepo's topic on `port`: the serial of the first
// RepoChanged broadcast within `wait`, 0 when none came.
uint64_t FirstBroadcastSerial(zmq::context_t& context, uint16_t port,
                              std::chrono::milliseconds wait) {
  zmq::socket_t sub(context, zmq::socket_type::sub);
  sub.set(zmq::sockopt::linger, 0);
  sub.set(zmq::sockopt::subscribe, std::string(kRepo) + std::string(1, '\0'));
  sub.connect("tcp://127.0.0.1:" + std::to_string(port));
  const auto until = std::chrono::steady_clock::now() + wait;
  while (std::chrono::steady_clock::now() < until) {
    zmq::pollitem_t item{static_cast<void*>(sub), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(100));
    if (!(item.revents & ZMQ_POLLIN)) continue;
    std::vector<zmq::message_t> frames = ReceiveMultipart(sub);
    if (frames.size() != 2) continue;
    v1::Envelope envelope;
    v1::SignedPayload payload;
    if (envelope.ParseFromString(frames[1].to_string()) &&
        payload.ParseFromString(envelope.payload()) && payload.has_repo_changed()) {
      return payload.repo_changed().serial();
    }
  }
  return 0;
}

TEST_F(BrokerTest, OwedListReNotifiesAMirrorBehindTheHeadWhenItSubscribes) {
  const Manifest first = FirstManifest();
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), first).ok());
  v1::Ack ack;
  ack.set_mirror_id("mirror-a");
  ack.set_repo(kRepo);
  ack.set_serial(1);
  ack.set_target_serial(1);
  ack.set_state(v1::ACK_APPLIED);
  ControlClient control(context_, Control());
  ASSERT_TRUE(control.SendAck(ack, kTimeout).ok());
  Manifest second = first;
  second.set_serial(2);
  second.Put(PutFile("pool/b.rpm", "package b"));
  ASSERT_TRUE(Publish(first, second).ok());

  // No publish after it subscribes: what arrives is the owed list's notice
  // of the head, which mirror-a has not ACKed.
  EXPECT_EQ(FirstBroadcastSerial(context_, broker_->events_port(), 5s), 2u);

  // Once every mirror has ACKed the head, nobody is owed anything.
  ack.set_serial(2);
  ack.set_target_serial(2);
  ASSERT_TRUE(control.SendAck(ack, kTimeout).ok());
  std::this_thread::sleep_for(1500ms);  // the owed list is worked out every second
  EXPECT_EQ(FirstBroadcastSerial(context_, broker_->events_port(), 2500ms), 0u);
}

TEST_F(BrokerTest, ForwardedAcksAreRecordedWithTheRelayPathAndCheckedOneByOne) {
  ASSERT_TRUE(Publish(Manifest(kRepo, 0), FirstManifest()).ok());
  v1::RelayAcksRequest batch;
  auto add = [&](const std::string& mirror, uint64_t serial, const std::string& via) {
    v1::RelayedAck* r = batch.add_acks();
    r->mutable_ack()->set_mirror_id(mirror);
    r->mutable_ack()->set_repo(kRepo);
    r->mutable_ack()->set_serial(serial);
    r->mutable_ack()->set_target_serial(serial);
    r->mutable_ack()->set_state(v1::ACK_APPLIED);
    r->set_via(via);
  };
  add("m-1", 1, "");
  add("m-2", 1, "relay-b");
  add("m-3", 7, "");      // a serial never published
  add("bad\nid", 1, "");  // not an id
  add("relay", 1, "");    // the relay's own name (plain TCP: "relay")
  ControlClient control(context_, Control());
  auto recorded = control.RelayAcks(batch, kTimeout);
  ASSERT_TRUE(recorded.ok()) << recorded.status().ToString();
  EXPECT_EQ(*recorded, 2u);
  auto status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok());
  std::map<std::string, std::string> via;
  for (const auto& m : status->mirrors()) via[m.mirror_id()] = m.via();
  EXPECT_EQ(via, (std::map<std::string, std::string>{{"m-1", "relay"}, {"m-2", "relay/relay-b"}}));

  // The mirror reporting itself takes its row back (a failover to here),
  // and from then on no relay's forwarded report overwrites it.
  v1::Ack direct = batch.acks(0).ack();
  ASSERT_TRUE(control.SendAck(direct, kTimeout).ok());
  v1::RelayAcksRequest again;
  *again.add_acks() = batch.acks(0);
  recorded = control.RelayAcks(again, kTimeout);
  ASSERT_TRUE(recorded.ok());
  EXPECT_EQ(*recorded, 0u);
  status = control.GetStatus(kTimeout);
  ASSERT_TRUE(status.ok());
  for (const auto& m : status->mirrors()) {
    if (m.mirror_id() == "m-1") {
      EXPECT_EQ(m.via(), "");
    }
  }
}

}  // namespace
}  // namespace mirrorcast::testing
