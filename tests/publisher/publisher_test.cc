// The publisher library: its path-list parser, its exit codes, and Publish()
// against a real Broker running in-process on 127.0.0.1 port 0.
#include "publisher/publisher.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "broker/broker.h"
#include "broker/manifest_store.h"
#include "core/crypto/keys.h"
#include "core/fs/atomic.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "core/net/control_client.h"
#include "core/net/publish_client.h"
#include "core/wire/envelope.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr milliseconds kTimeout{10000};

// ---------------------------------------------------------------------------
// ParsePathList and PublishExitCode
// ---------------------------------------------------------------------------

TEST(ParsePathList, SkipsCommentsAndBlanksAndNormalises) {
  auto paths = ParsePathList(
      "# a comment\n"
      "\n"
      "   \n"
      "  # an indented comment\n"
      "./pool/b.rpm\r\n"
      "repodata/\n"
      "./././pool/a.rpm\n"
      "pool/b.rpm\n"
      "metadata//\n"
      "last-line-without-newline");
  ASSERT_TRUE(paths.ok()) << paths.status().ToString();
  EXPECT_EQ(*paths, (std::vector<std::string>{"last-line-without-newline", "metadata", "pool/a.rpm",
                                              "pool/b.rpm", "repodata"}));
}

TEST(ParsePathList, EmptyInputIsAnEmptyList) {
  auto paths = ParsePathList("");
  ASSERT_TRUE(paths.ok());
  EXPECT_TRUE(paths->empty());
  paths = ParsePathList("# only a comment\n\n");
  ASSERT_TRUE(paths.ok());
  EXPECT_TRUE(paths->empty());
}

TEST(ParsePathList, BadPathIsReportedWithItsLineNumber) {
  struct Case {
    std::string text;
    std::string line;
  };
  const std::vector<Case> cases = {
      {"ok.rpm\n# comment\n../etc/passwd\n", "line 3"}, {"/etc/passwd\n", "line 1"},
      {"a.rpm\r\nb.rpm\r\npool//c.rpm\r\n", "line 3"},  {"\n\n\npool/../x\n", "line 4"},
      {std::string("a\n\nbad\0nul\n", 10), "line 3"},
  };
  for (const Case& c : cases) {
    auto paths = ParsePathList(c.text);
    ASSERT_FALSE(paths.ok()) << c.text;
    EXPECT_EQ(paths.status().code(), Status::Code::kInvalidArgument) << c.text;
    EXPECT_NE(paths.status().message().find(c.line), std::string::npos) << paths.status().message();
  }
}

TEST(PublishExitCode, MapsStatusCodes) {
  EXPECT_EQ(PublishExitCode(Status::Ok()), 0);
  EXPECT_EQ(PublishExitCode(Status::InvalidArgument("bad option")), 2);
  EXPECT_EQ(PublishExitCode(Status::Unavailable("no broker")), 3);
  EXPECT_EQ(PublishExitCode(Status::Timeout("slow broker")), 3);
  EXPECT_EQ(PublishExitCode(Status::Rejected("serial conflict")), 1);
  EXPECT_EQ(PublishExitCode(Status::Corruption("digest mismatch")), 1);
  EXPECT_EQ(PublishExitCode(Status::IoError("disk")), 1);
  EXPECT_EQ(PublishExitCode(Status::Internal("bug")), 1);
}

// ---------------------------------------------------------------------------
// Publish() against an in-process broker
// ---------------------------------------------------------------------------

class PublishTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "served/main");
    auto key = SigningKey::Generate();
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    ASSERT_TRUE(key->SaveFiles((dir_ / "publisher").string()).ok());

    BrokerOptions broker;
    broker.listen = HostPort{"127.0.0.1", 0};
    broker.state_dir = dir_ / "broker-state";
    // The broker fronts the tree the publisher scans, as in production: it
    // checks every newly published file there before it commits.
    broker.tree_root = dir_ / "served";
    broker.trust = {dir_ / "publisher.pub"};
    broker.broker_id = "test-broker";
    broker.insecure_plaintext = true;
    broker.content_workers = 1;
    broker.linked_per_reply = linked_per_reply_;
    broker_ = std::make_unique<Broker>(broker);
    Status started = broker_->Start();
    ASSERT_TRUE(started.ok()) << started.ToString();

    WriteFile(dir_ / "served/main/pool/a.rpm", RandomBytes(3000, 1));
    WriteFile(dir_ / "served/main/pool/b.rpm", RandomBytes(5000, 2));
    WriteFile(dir_ / "served/main/repodata/repomd.xml", "<repomd/>");
  }

  void TearDown() override {
    if (broker_) broker_->Stop();
  }

  PublisherOptions Options() const {
    PublisherOptions options;
    options.broker = HostPort{"127.0.0.1", broker_->control_port()};
    options.key_file = dir_ / "publisher.key";
    options.repo = "main";
    options.tree = dir_ / "served/main";
    options.state_dir = dir_ / "publish-state";
    options.timeout = kTimeout;
    options.client_name = "publisher-test";
    return options;
  }

  Result<PublishOutcome> Run(const PublisherOptions& options) { return Publish(options, context_); }
  Result<PublishOutcome> Run() { return Run(Options()); }

  // The broker's view of the repo.
  v1::RepoSerial BrokerHead() {
    ControlClient control(context_, HostPort{"127.0.0.1", broker_->control_port()});
    auto hello = control.Hello("test", kTimeout);
    EXPECT_TRUE(hello.ok()) << hello.status().ToString();
    if (hello.ok()) {
      for (const auto& r : hello->repos()) {
        if (r.repo() == "main") return r;
      }
    }
    return v1::RepoSerial{};
  }

  // The manifest the broker stored for its head, which must be `serial`:
  // its index under the announced root, and the chunks it names.
  Manifest BrokerManifest(uint64_t serial) {
    const v1::RepoSerial head = BrokerHead();
    EXPECT_EQ(head.serial(), serial);
    ManifestStore store(dir_ / "broker-state/manifest-objects");
    auto bytes = store.Load(head.manifest_sha256(), kMaxIndexBytes);
    EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
    if (!bytes.ok()) return Manifest();
    auto index = ManifestIndex::Decode(*bytes);
    EXPECT_TRUE(index.ok()) << index.status().ToString();
    if (!index.ok()) return Manifest();
    Manifest manifest("main", serial);
    Status read = ForEachEntry(*index, store, [&](v1::FileEntry e) {
      manifest.Put(std::move(e));
      return Status::Ok();
    });
    EXPECT_TRUE(read.ok()) << read.ToString();
    return manifest;
  }

  // The publisher's kept manifest (an SQLite database).
  fs::path StateManifest() const { return dir_ / "publish-state/main.manifest.db"; }
  void RemoveStateManifest() {
    ASSERT_TRUE(fs::remove(StateManifest()));
    fs::remove(StateManifest().string() + "-wal");
    fs::remove(StateManifest().string() + "-shm");
  }

  // Publishes the initial tree as serial 1.
  void PublishFirst() {
    auto first = Run();
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    ASSERT_TRUE(first->published);
    ASSERT_EQ(first->serial, 1u);
  }

  TempDir dir_{"mirrorcast-publisher"};
  zmq::context_t context_;
  std::unique_ptr<Broker> broker_;
  size_t linked_per_reply_ = 250000;  // the broker's default
};

TEST_F(PublishTest, FirstPublishIsSerialOneAndARerunSendsNothing) {
  auto first = Run();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(first->published);
  EXPECT_EQ(first->repo, "main");
  EXPECT_EQ(first->serial, 1u);
  EXPECT_EQ(first->previous_serial, 0u);
  // pool, pool/a.rpm, pool/b.rpm, repodata, repodata/repomd.xml
  EXPECT_EQ(first->added, 5u);
  EXPECT_EQ(first->modified, 0u);
  EXPECT_EQ(first->deleted, 0u);
  EXPECT_EQ(first->manifest_entries, 5u);
  EXPECT_EQ(first->scan.files_hashed, 3u);
  EXPECT_EQ(first->scan.bytes_hashed, 3000u + 5000u + 9u);
  EXPECT_EQ(DescribeOutcome(*first),
            "published repo=main serial=1 changes=5 (added 5, modified 0, deleted 0)");

  const v1::RepoSerial head = BrokerHead();
  EXPECT_EQ(head.serial(), 1u);
  const Manifest stored = BrokerManifest(1);
  EXPECT_EQ(stored.size(), 5u);
  EXPECT_EQ(head.manifest_sha256(), stored.Digest());
  ASSERT_NE(stored.Find("pool/b.rpm"), nullptr);
  EXPECT_EQ(stored.Find("pool/b.rpm")->size(), 5000u);
  EXPECT_TRUE(fs::exists(StateManifest()));

  auto second = Run();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_FALSE(second->published);
  EXPECT_EQ(second->serial, 1u);
  EXPECT_EQ(second->previous_serial, 1u);
  EXPECT_EQ(second->changes(), 0u);
  EXPECT_TRUE(second->previous_from_state);
  EXPECT_EQ(second->scan.bytes_hashed, 0u);
  EXPECT_EQ(second->scan.files_hashed, 0u);
  EXPECT_EQ(second->scan.cache_hits, 3u);
  EXPECT_EQ(DescribeOutcome(*second), "nothing changed: repo=main stays at serial 1");
  EXPECT_EQ(BrokerHead().serial(), 1u);
}

TEST_F(PublishTest, HashCacheFollowsTheFilesTheBrokerLinked) {
  ASSERT_NO_FATAL_FAILURE(PublishFirst());
  // The broker hard-linked every published file into its retained store,
  // which moved their ctime (the hash cache's key)...
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "served/main/pool/a.rpm").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 2u);
  // ...and told the publisher, so a rerun still reads no file.
  auto rerun = Run();
  ASSERT_TRUE(rerun.ok()) << rerun.status().ToString();
  EXPECT_FALSE(rerun->published);
  EXPECT_EQ(rerun->scan.files_hashed, 0u);
  EXPECT_EQ(rerun->scan.cache_hits, 3u);

  // A file touched after the broker's link is hashed again.
  ASSERT_EQ(::chmod((dir_ / "served/main/pool/b.rpm").c_str(), 0600), 0);
  auto after_chmod = Run();
  ASSERT_TRUE(after_chmod.ok()) << after_chmod.status().ToString();
  EXPECT_EQ(after_chmod->scan.files_hashed, 1u);
}

// The same when the links do not fit the publish reply and come in pages.
class PublishPagedLinksTest : public PublishTest {
 protected:
  PublishPagedLinksTest() { linked_per_reply_ = 1; }
};

TEST_F(PublishPagedLinksTest, HashCacheFollowsLinksPastThePublishReply) {
  ASSERT_NO_FATAL_FAILURE(PublishFirst());
  auto rerun = Run();
  ASSERT_TRUE(rerun.ok()) << rerun.status().ToString();
  EXPECT_FALSE(rerun->published);
  EXPECT_EQ(rerun->scan.files_hashed, 0u);
  EXPECT_EQ(rerun->scan.cache_hits, 3u);
}

// A bad push (a wrong --tree, an unmounted volume) reaches every mirror in
// seconds: the publisher refuses to empty a repo or delete more than the
// allowed share of it unless told to.
TEST_F(PublishTest, PublishThatWouldEmptyTheRepoIsRefusedUnlessForced) {
  ASSERT_NO_FATAL_FAILURE(PublishFirst());
  PublisherOptions wrong_tree = Options();
  wrong_tree.tree = dir_ / "empty";
  fs::create_directories(wrong_tree.tree);
  auto refused = Run(wrong_tree);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Status::Code::kRejected);
  EXPECT_EQ(PublishExitCode(refused.status()), 1);
  EXPECT_NE(refused.status().message().find("would leave repo main empty, deleting all 5 "
                                            "entries of serial 1"),
            std::string::npos)
      << refused.status().message();
  EXPECT_NE(refused.status().message().find("--force"), std::string::npos);
  EXPECT_EQ(BrokerHead().serial(), 1u);
  EXPECT_EQ(BrokerManifest(1).size(), 5u);

  wrong_tree.force = true;
  auto forced = Run(wrong_tree);
  ASSERT_TRUE(forced.ok()) << forced.status().ToString();
  EXPECT_EQ(forced->deleted, 5u);
  EXPECT_EQ(BrokerHead().serial(), 2u);
}

TEST_F(PublishTest, PublishDeletingMoreThanTheAllowedShareIsRefused) {
  for (int i = 0; i < 15; ++i) {
    WriteFile(dir_ / "served/main/pool" / ("p" + std::to_string(i) + ".rpm"), "p");
  }
  ASSERT_NO_FATAL_FAILURE(PublishFirst());  // 20 entries
  // Two of 20 (10 %) is allowed...
  fs::remove(dir_ / "served/main/pool/p0.rpm");
  fs::remove(dir_ / "served/main/pool/p1.rpm");
  auto ten = Run();
  ASSERT_TRUE(ten.ok()) << ten.status().ToString();
  EXPECT_EQ(ten->deleted, 2u);
  // ...three of 18 (16.7 %) is not, and nothing is published.
  for (int i = 2; i < 5; ++i)
    fs::remove(dir_ / "served/main/pool" / ("p" + std::to_string(i) + ".rpm"));
  auto refused = Run();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Status::Code::kRejected);
  EXPECT_NE(refused.status().message().find("would delete 3 of the 18 entries of repo main "
                                            "(16.7%), more than --max-delete-percent 10"),
            std::string::npos)
      << refused.status().message();
  EXPECT_EQ(BrokerHead().serial(), 2u);
  // A larger share when the operator says so.
  PublisherOptions allowed = Options();
  allowed.max_delete_fraction = 0.20;
  auto more = Run(allowed);
  ASSERT_TRUE(more.ok()) << more.status().ToString();
  EXPECT_EQ(more->deleted, 3u);
  EXPECT_EQ(BrokerHead().serial(), 3u);
}

TEST_F(PublishTest, ModificationPublishesTheNextSerial) {
  ASSERT_NO_FATAL_FAILURE(PublishFirst());
  const std::string updated = RandomBytes(4000, 3);
  WriteFile(dir_ / "served/main/pool/a.rpm", updated);

  auto run = Run();
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_TRUE(run->published);
  EXPECT_EQ(run->serial, 2u);
  EXPECT_EQ(run->previous_serial, 1u);
  EXPECT_EQ(run->modified, 1u);
  EXPECT_EQ(run->added, 0u);
  EXPECT_EQ(run->deleted, 0u);
  EXPECT_TRUE(run->previous_from_state);
  EXPECT_EQ(run->scan.files_hashed, 1u);
  EXPECT_EQ(run->scan.bytes_hashed, updated.size());

  EXPECT_EQ(BrokerHead().serial(), 2u);
  const Manifest stored = BrokerManifest(2);
  ASSERT_NE(stored.Find("pool/a.rpm"), nullptr);
  EXPECT_EQ(stored.Find("pool/a.rpm")->size(), updated.size());
  EXPECT_EQ(BrokerHead().manifest_sha256(), stored.Digest());
}

TEST_F(PublishTest, PathsFromRescansOnlyTheListedPaths) {
  ASSERT_NO_FATAL_FAILURE(PublishFirst());
  fs::remove(dir_ / "served/main/pool/b.rpm");
  // Changed but not listed: a paths-from run must not see it.
  WriteFile(dir_ / "served/main/repodata/repomd.xml", "<repomd serial='2'/>");
  WriteFile(dir_ / "paths.txt", "# removed by the repo tool\n./pool/b.rpm\n");

  PublisherOptions options = Options();
  options.paths_from = dir_ / "paths.txt";
  options.max_delete_fraction = 1;  // one of five entries
  auto run = Run(options);
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_TRUE(run->published);
  EXPECT_EQ(run->serial, 2u);
  EXPECT_EQ(run->deleted, 1u);
  EXPECT_EQ(run->added, 0u);
  EXPECT_EQ(run->modified, 0u);
  EXPECT_EQ(run->manifest_entries, 4u);

  const Manifest stored = BrokerManifest(2);
  EXPECT_EQ(stored.Find("pool/b.rpm"), nullptr);
  ASSERT_NE(stored.Find("repodata/repomd.xml"), nullptr);
  EXPECT_EQ(stored.Find("repodata/repomd.xml")->size(), 9u);  // the old "<repomd/>"

  // A bad list is a usage error, before the broker is asked anything.
  WriteFile(dir_ / "paths.txt", "pool/a.rpm\n../../etc/shadow\n");
  run = Run(options);
  ASSERT_FALSE(run.ok());
  EXPECT_EQ(run.status().code(), Status::Code::kInvalidArgument) << run.status().ToString();
  EXPECT_NE(run.status().message().find("line 2"), std::string::npos) << run.status().message();
  EXPECT_EQ(PublishExitCode(run.status()), 2);
  EXPECT_EQ(BrokerHead().serial(), 2u);
}

TEST_F(PublishTest, MissingStateManifestIsFetchedFromTheBroker) {
  ASSERT_NO_FATAL_FAILURE(PublishFirst());
  ASSERT_NO_FATAL_FAILURE(RemoveStateManifest());

  // Unchanged tree: the broker's manifest is the previous one, so nothing to send.
  auto same = Run();
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  EXPECT_FALSE(same->published);
  EXPECT_FALSE(same->previous_from_state);
  EXPECT_TRUE(fs::exists(StateManifest()));  // kept for next time

  ASSERT_NO_FATAL_FAILURE(RemoveStateManifest());
  WriteFile(dir_ / "served/main/pool/b.rpm", RandomBytes(6000, 4));
  auto run = Run();
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_FALSE(run->previous_from_state);
  EXPECT_TRUE(run->published);
  EXPECT_EQ(run->serial, 2u);
  // Diffed against the broker's serial 1, not against an empty tree.
  EXPECT_EQ(run->modified, 1u);
  EXPECT_EQ(run->added, 0u);
  EXPECT_EQ(run->deleted, 0u);
  EXPECT_EQ(BrokerHead().serial(), 2u);
}

TEST_F(PublishTest, StaleStateManifestIsReplacedByTheBrokers) {
  ASSERT_NO_FATAL_FAILURE(PublishFirst());
  // The state dir keeps serial 1 while another publisher host moves the repo on.
  const std::string kept = ReadFile(StateManifest());
  WriteFile(dir_ / "served/main/pool/a.rpm", RandomBytes(100, 5));
  ASSERT_TRUE(Run().ok());
  WriteFile(StateManifest(), kept);

  auto run = Run();
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_FALSE(run->previous_from_state);
  EXPECT_FALSE(run->published);
  EXPECT_EQ(run->serial, 2u);
}

TEST_F(PublishTest, UnreachableBrokerIsUnavailableOrTimeout) {
  // A bound but not listening port: connections are refused, and the port
  // cannot be taken by anyone else while we hold it.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  PublisherOptions options = Options();
  options.broker = HostPort{"127.0.0.1", ntohs(addr.sin_port)};
  options.timeout = milliseconds(500);
  auto run = Run(options);
  ::close(fd);
  ASSERT_FALSE(run.ok());
  const Status::Code code = run.status().code();
  EXPECT_TRUE(code == Status::Code::kUnavailable || code == Status::Code::kTimeout)
      << run.status().ToString();
  EXPECT_NE(run.status().message().find(options.broker.ToString()), std::string::npos)
      << run.status().message();
  EXPECT_EQ(PublishExitCode(run.status()), 3);
  EXPECT_FALSE(fs::exists(StateManifest()));
}

TEST_F(PublishTest, BadOptionsAreInvalidArgument) {
  PublisherOptions options = Options();
  options.repo = "../escape";
  EXPECT_EQ(Run(options).status().code(), Status::Code::kInvalidArgument);
  options = Options();
  options.key_file = dir_ / "missing.key";
  EXPECT_EQ(Run(options).status().code(), Status::Code::kInvalidArgument);
  options = Options();
  options.tree = dir_ / "no-such-tree";
  EXPECT_EQ(Run(options).status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(BrokerHead().serial(), 0u);
}

}  // namespace
}  // namespace mirrorcast::testing
