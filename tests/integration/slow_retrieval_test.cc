// Slow retrieval: a broker that trickles content just fast enough to beat
// the stall timeout cannot hold a mirror for ever. A transfer under the
// minimum rate is aborted, what it wrote never counts as verified (a resume
// hashes it again with the rest), and a retry finishes the job.
#include <gtest/gtest.h>

#include <ctime>
#include <fstream>
#include <functional>
#include <thread>

#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/manifest/manifest.h"
#include "core/net/content_client.h"
#include "core/wire/envelope.h"
#include "tests/integration/hostile_broker.h"
#include "tests/support/entries.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

bool WaitFor(const std::function<bool()>& done, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return done();
}

std::string ReadText(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// FetchFiles once the client's socket has connected (requests are refused
// as Unavailable until then).
Status FetchConnected(ContentClient& client, const FileFetch& file, FetchStats* stats) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    Status s = client.FetchFiles({file}, stats);
    if (s.code() != Status::Code::kUnavailable || std::chrono::steady_clock::now() > deadline) {
      return s;
    }
    std::this_thread::sleep_for(20ms);
  }
}

// 256 KiB in 16 KiB chunks, one request in flight, a reply every 200 ms:
// about 80 KB/s, far under a floor of 1 MB/s judged over 1 s.
class SlowRetrievalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    content_ = RandomBytes(256 * 1024, 7);
    broker_.ServeFile(content_);
    broker_.Start();
  }

  ContentClientOptions TrickleOptions() const {
    ContentClientOptions options;
    options.chunk_bytes = 16 * 1024;
    options.credit = 1;
    options.stall_timeout = 10s;  // every reply beats it
    options.min_rate_bytes = 1000 * 1000;
    options.min_rate_window = 1s;
    return options;
  }

  FileFetch Fetch(bool resume) const {
    FileFetch f;
    f.path = "isos/big.iso";
    f.size = content_.size();
    f.sha256 = Sha256Of(content_);
    f.dest = dir_ / "dest";
    f.resume = resume;
    return f;
  }

  TempDir dir_{"mirrorcast-slow"};
  std::string content_;
  HostileBroker broker_;
  zmq::context_t context_{1};
};

TEST_F(SlowRetrievalTest, ATransferUnderTheMinimumRateIsAbortedAndAResumeFinishesIt) {
  broker_.SetContentDelay(200ms);
  HostPort content = *ParseHostPort(broker_.address());
  ContentClientOptions options = TrickleOptions();
  FetchStats stats;
  const auto started = std::chrono::steady_clock::now();
  ContentClient client(context_, content.WithPort(broker_.content_port()), "demo", options);
  Status s = FetchConnected(client, Fetch(false), &stats);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_EQ(s.code(), Status::Code::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("minimum rate"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("slow retrieval"), std::string::npos) << s.ToString();
  std::cout << "  aborted after " << seconds << " s having received " << stats.bytes_fetched
            << " of " << content_.size() << " bytes\n";
  // What arrived is a prefix, not a file: nothing says it is complete.
  std::error_code ec;
  const uint64_t kept = fs::file_size(dir_ / "dest", ec);
  EXPECT_LT(kept, content_.size());

  // Retried at full speed: resumes where it stopped, the whole file verified.
  broker_.SetContentDelay(0ms);
  FetchStats again;
  ContentClient retry(context_, content.WithPort(broker_.content_port()), "demo", options);
  s = FetchConnected(retry, Fetch(true), &again);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ReadText(dir_ / "dest"), content_);
  EXPECT_EQ(again.bytes_fetched, content_.size() - kept) << "the retry resumed";
}

TEST_F(SlowRetrievalTest, BytesOfAnAbortedTransferNeverCountAsVerified) {
  // The trickled prefix was wrong: the resume hashes it with the rest and
  // refuses the file, however fast the rest arrives.
  broker_.SetContentDelay(200ms);
  HostPort content = *ParseHostPort(broker_.address());
  ContentClient client(context_, content.WithPort(broker_.content_port()), "demo",
                       TrickleOptions());
  FetchStats stats;
  ASSERT_EQ(FetchConnected(client, Fetch(false), &stats).code(), Status::Code::kTimeout);
  std::string prefix = ReadText(dir_ / "dest");
  ASSERT_FALSE(prefix.empty());
  prefix[0] ^= 0x55;
  WriteFile(dir_ / "dest", prefix, 0600);

  broker_.SetContentDelay(0ms);
  ContentClient retry(context_, content.WithPort(broker_.content_port()), "demo", TrickleOptions());
  Status s = FetchConnected(retry, Fetch(true), &stats);
  EXPECT_EQ(s.code(), Status::Code::kCorruption) << s.ToString();
}

TEST_F(SlowRetrievalTest, AnHonestTransferAboveTheFloorIsNotAborted) {
  broker_.SetContentDelay(0ms);
  HostPort content = *ParseHostPort(broker_.address());
  ContentClientOptions options = TrickleOptions();
  options.min_rate_bytes = 1000;  // 1 KB/s: any working link
  ContentClient client(context_, content.WithPort(broker_.content_port()), "demo", options);
  FetchStats stats;
  Status s = FetchConnected(client, Fetch(false), &stats);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ReadText(dir_ / "dest"), content_);
}

// End to end: a subscriber daemon against a trickling broker aborts the
// apply (the tree stays at its serial, no partial file in it), reports the
// failure, and applies once the broker serves at full speed again.
TEST_F(SlowRetrievalTest, TheSubscriberAbortsASlowApplyAndRetries) {
  SigningKey origin = *SigningKey::Generate();
  WriteFile(dir_ / "origin.pub", origin.public_key().ToFileText());
  Manifest m("demo", 1);
  m.Put(FileEntryOf("isos/big.iso", content_));
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
  *change->mutable_entry() = FileEntryOf("isos/big.iso", content_);
  broker_.ServeManifest(m);
  broker_.AddEvent(1, SealEnvelope(payload, origin));
  // The file is one chunk: its reply comes after 1.5 s, while the floor is
  // judged after 1 s.
  broker_.SetContentDelay(1500ms);

  const fs::path log = dir_ / "subscriber.log";
  ChildProcess sub;
  sub.Start(HostileSubscriberArgv(
                broker_, dir_.path(), "slow",
                {"--stall-timeout", "10", "--min-rate", "1000000", "--min-rate-window", "1"}),
            log);
  auto failed = [&] {
    for (const auto& ack : broker_.acks()) {
      if (ack.state() == v1::ACK_FAILED && ack.error().find("slow retrieval") != std::string::npos)
        return true;
    }
    return false;
  };
  ASSERT_TRUE(WaitFor(failed, 30s)) << ReadText(log);
  EXPECT_FALSE(fs::exists(dir_ / "tree/isos/big.iso")) << "a partial file reached the tree";

  broker_.SetContentDelay(0ms);
  auto applied = [&] {
    for (const auto& ack : broker_.acks()) {
      if (ack.state() == v1::ACK_APPLIED && ack.serial() == 1) return true;
    }
    return false;
  };
  ASSERT_TRUE(WaitFor(applied, 60s)) << ReadText(log);
  EXPECT_EQ(ReadText(dir_ / "tree/isos/big.iso"), content_);
  sub.Stop();
}

}  // namespace
}  // namespace mirrorcast::testing
