// The limits a hostile peer cannot get past, on a real Broker in-process on
// 127.0.0.1 port 0, driven over raw DEALER sockets (one socket = one peer):
// delta signatures refused before any work, transfer tokens bound to their
// peer, requests in flight per peer with the others served (round-robin),
// delta transfers and scratch bytes per peer, expiry of unread deltas, and the
// control socket's per-type size caps and per-peer rate. Each test checks the
// refusal's words and that the honest path still works.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "broker/broker.h"
#include "core/base/clock.h"
#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/delta/delta.h"
#include "core/manifest/manifest.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"
#include "tests/support/entries.h"
#include "tests/support/fake_clock.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr milliseconds kTimeout{10000};
constexpr const char* kRepo = "main";
constexpr int64_t kMtime = 1700000000;

std::string SealFirstPublish(const Manifest& to, const SigningKey& key) {
  const int64_t now = Clock::Real().NowUnix();
  v1::RepoChanged event;
  event.set_repo(to.repo());
  event.set_serial(to.serial());
  event.set_previous_serial(0);
  event.set_published_unix(now);
  event.set_expires_unix(now + 3600);
  event.set_manifest_sha256(to.Digest());
  event.set_manifest_entries(to.size());
  for (v1::Change& c : DiffManifests(Manifest(to.repo(), 0), to)) {
    *event.add_changes() = std::move(c);
  }
  event.set_change_count(static_cast<uint64_t>(event.changes_size()));
  v1::SignedPayload payload;
  *payload.mutable_repo_changed() = event;
  return SealEnvelope(std::move(payload), key);
}

// Polls `done` every 20 ms until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F done, milliseconds timeout = kTimeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return true;
}

// Holds content workers in ContentServerOptions::before_job until opened,
// and records the order in which requests were taken.
class WorkerGate {
 public:
  void Hold() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  void Open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void Enter(const v1::ContentRequest& request) {
    std::unique_lock lock(mu_);
    order_.push_back(request.request_id());
    ++entered_;
    cv_.wait(lock, [&] { return open_; });
  }
  size_t entered() {
    std::lock_guard lock(mu_);
    return entered_;
  }
  std::vector<uint64_t> order() {
    std::lock_guard lock(mu_);
    return order_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  size_t entered_ = 0;
  std::vector<uint64_t> order_;
};

class LimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "tree" / kRepo);
    auto key = SigningKey::Generate();
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    key_.emplace(std::move(*key));
    WriteFile(dir_ / "publisher.pub", key_->public_key().ToFileText());
    options_.listen = HostPort{"127.0.0.1", 0};
    options_.state_dir = dir_ / "state";
    options_.tree_root = dir_ / "tree";
    options_.trust = {dir_ / "publisher.pub"};
    options_.broker_id = "limits-broker";
    options_.insecure_plaintext = true;
    options_.content_workers = 1;
    options_.content_before_job = [this](const std::string&, const v1::ContentRequest& r) {
      gate_.Enter(r);
    };
    target_ = RandomBytes(400000, 2);
    basis_ = target_;
    basis_.replace(100000, 5000, RandomBytes(5000, 3));  // the mirror's older version
  }

  void TearDown() override {
    gate_.Open();
    if (broker_) broker_->Stop();
  }

  // Starts the broker with options_ and publishes big.bin = target_.
  void StartAndPublish() {
    broker_ = std::make_unique<Broker>(options_);
    Status started = broker_->Start();
    ASSERT_TRUE(started.ok()) << started.ToString();
    const fs::path file = dir_ / "tree" / kRepo / "big.bin";
    WriteFile(file, target_);
    ASSERT_TRUE(SetModeAndMtime(file, 0644, kMtime).ok());
    Manifest first(kRepo, 1);
    first.Put(FileEntryOf("big.bin", target_));
    ControlClient control(context_, Control());
    v1::ControlRequest request;
    request.mutable_publish()->set_envelope(SealFirstPublish(first, *key_));
    auto reply = control.Call(std::move(request), kTimeout);
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    WriteFile(dir_ / "basis", basis_);
    auto sig = ComputeSignature(dir_ / "basis");
    ASSERT_TRUE(sig.ok()) << sig.status().ToString();
    signature_ = *sig;
  }

  HostPort Control() const { return HostPort{"127.0.0.1", broker_->control_port()}; }
  HostPort Content() const { return HostPort{"127.0.0.1", broker_->content_port()}; }

  zmq::socket_t Dealer(const HostPort& to) {
    zmq::socket_t dealer(context_, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.connect(to.Endpoint());
    return dealer;
  }

  static void Send(zmq::socket_t& dealer, const google::protobuf::MessageLite& request) {
    zmq::message_t frame = ToFrame(request);
    ASSERT_TRUE(dealer.send(frame, zmq::send_flags::none));
  }

  // The next reply on `dealer` (a default one, failing the test, on timeout).
  template <typename Reply>
  static Reply Receive(zmq::socket_t& dealer) {
    zmq::pollitem_t item{static_cast<void*>(dealer), 0, ZMQ_POLLIN, 0};
    Reply reply;
    if (zmq::poll(&item, 1, kTimeout) != 1) {
      ADD_FAILURE() << "no reply within " << kTimeout.count() << " ms";
      return reply;
    }
    zmq::message_t got;
    if (dealer.recv(got, zmq::recv_flags::dontwait)) {
      EXPECT_TRUE(reply.ParseFromArray(got.data(), static_cast<int>(got.size())));
    }
    return reply;
  }

  static v1::ContentRequest DeltaRequest(uint64_t id, const std::string& signature,
                                         const std::string& sha256) {
    v1::ContentRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(id);
    request.set_repo(kRepo);
    request.mutable_delta()->set_path("big.bin");
    request.mutable_delta()->set_expected_sha256(sha256);
    request.mutable_delta()->set_signature(signature);
    return request;
  }

  static v1::ContentRequest DeltaRange(uint64_t id, const std::string& token, bool release) {
    v1::ContentRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(id);
    request.set_repo(kRepo);
    request.mutable_delta_range()->set_transfer_token(token);
    request.mutable_delta_range()->set_transfer_id(1);
    request.mutable_delta_range()->set_offset(0);
    request.mutable_delta_range()->set_length(4096);
    request.mutable_delta_range()->set_release(release);
    return request;
  }

  static v1::ContentRequest Range(uint64_t id, const std::string& content) {
    v1::ContentRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(id);
    request.set_repo(kRepo);
    request.mutable_range()->set_path("big.bin");
    request.mutable_range()->set_sha256(Sha256Of(content));
    request.mutable_range()->set_length(1024);
    return request;
  }

  v1::ContentReply Call(zmq::socket_t& dealer, const v1::ContentRequest& request) {
    Send(dealer, request);
    return Receive<v1::ContentReply>(dealer);
  }

  // A whole delta fetch through the real client: the honest path.
  Status HonestDelta() {
    ContentClientOptions o;
    o.stall_timeout = kTimeout;
    ContentClient client(context_, Content(), kRepo, o);
    FetchStats stats;
    Status s = client.FetchDelta("big.bin", Sha256Of(target_), signature_, dir_ / "delta",
                                 target_.size(), &stats);
    if (!s.ok()) return s;
    std::string rebuilt;
    MC_RETURN_IF_ERROR(
        ApplyDelta(dir_ / "basis", dir_ / "delta", dir_ / "rebuilt", target_.size(), &rebuilt));
    if (rebuilt != Sha256Of(target_)) return Status::Corruption("rebuilt file differs");
    return Status::Ok();
  }

  size_t ScratchFiles() {
    size_t n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_ / "state/scratch", ec)) {
      (void)e;
      ++n;
    }
    return n;
  }

  TempDir dir_{"mirrorcast-limits"};
  zmq::context_t context_;
  std::optional<SigningKey> key_;
  BrokerOptions options_;
  // A test may point options_.clock here: it outlives the broker.
  FakeClock fake_clock_{static_cast<int64_t>(std::time(nullptr))};
  std::unique_ptr<Broker> broker_;
  WorkerGate gate_;
  std::string target_;
  std::string basis_;
  std::string signature_;
};

// A header of RS_RK_BLAKE2 with `block` and `strong`, then `records` records.
std::string HostileSignature(uint32_t block, uint32_t strong, size_t records, bool same_weak) {
  std::string sig;
  auto be32 = [&](uint32_t v) {
    for (int i = 3; i >= 0; --i) sig.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  be32(0x72730147);
  be32(block);
  be32(strong);
  for (size_t r = 0; r < records; ++r) {
    be32(same_weak ? 0x01020304u : static_cast<uint32_t>(r * 2654435761u));
    for (uint32_t k = 0; k < strong; ++k) sig.push_back(static_cast<char>((r >> (k % 4)) + k));
  }
  return sig;
}

TEST_F(LimitsTest, HostileSignaturesAreRefusedBeforeAnyWork) {
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t dealer = Dealer(Content());
  const std::string sha = Sha256Of(target_);
  struct Case {
    std::string signature;
    std::string words;
  };
  const std::vector<Case> cases = {
      // The attack in small: 1-byte strong sums.
      {HostileSignature(2048, 1, 1000, false), "strong sum length 1 outside [8, 32]"},
      // A silly block length.
      {HostileSignature(16, 8, 1000, false), "block length 16 outside [256,"},
      // Far more blocks than a basis of twice this 400 kB file would have.
      {HostileSignature(256, 8, 100000, false), "is larger than the signature of a basis of 2x"},
      // Records made to collide in librsync's hash table.
      {HostileSignature(256, 8, 500, true), "different blocks with one weak sum"},
  };
  uint64_t id = 1;
  for (const Case& c : cases) {
    v1::ContentReply reply = Call(dealer, DeltaRequest(id, c.signature, sha));
    EXPECT_EQ(reply.request_id(), id);
    EXPECT_FALSE(reply.ok());
    EXPECT_NE(reply.error().find(c.words), std::string::npos) << reply.error();
    EXPECT_TRUE(reply.transfer_token().empty());
    ++id;
  }
  EXPECT_EQ(ScratchFiles(), 0u);  // nothing was computed
  // The honest signature, on another connection, still gets its delta.
  Status honest = HonestDelta();
  EXPECT_TRUE(honest.ok()) << honest.ToString();
}

TEST_F(LimitsTest, TransferTokensAreRandomAndOnlyTheirPeerCanReadOrReleaseThem) {
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t owner = Dealer(Content());
  zmq::socket_t thief = Dealer(Content());
  const std::string sha = Sha256Of(target_);
  v1::ContentReply started = Call(owner, DeltaRequest(1, signature_, sha));
  ASSERT_TRUE(started.ok()) << started.error();
  const std::string token = started.transfer_token();
  EXPECT_EQ(token.size(), 16u);
  EXPECT_EQ(started.transfer_id(), 0u);  // no sequential id any more
  // A second transfer of the same delta gets another token.
  v1::ContentReply again = Call(owner, DeltaRequest(2, signature_, sha));
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_NE(again.transfer_token(), token);

  // Another peer holding the token can neither read nor release it, and is
  // told exactly what it would be told of a token that does not exist.
  v1::ContentReply read = Call(thief, DeltaRange(3, token, false));
  EXPECT_FALSE(read.ok());
  EXPECT_EQ(read.error(), "unknown or expired delta transfer");
  EXPECT_TRUE(read.data().empty());
  v1::ContentReply release = Call(thief, DeltaRange(4, token, true));
  EXPECT_FALSE(release.ok());
  EXPECT_EQ(release.error(), "unknown or expired delta transfer");
  // Neither can a guessed or empty one.
  EXPECT_FALSE(Call(thief, DeltaRange(5, std::string(16, '\0'), false)).ok());
  EXPECT_FALSE(Call(thief, DeltaRange(6, "", false)).ok());

  // The owner still reads it, then releases it; after that it is gone.
  v1::ContentReply mine = Call(owner, DeltaRange(7, token, false));
  ASSERT_TRUE(mine.ok()) << mine.error();
  EXPECT_FALSE(mine.data().empty());
  EXPECT_TRUE(Call(owner, DeltaRange(8, token, true)).ok());
  EXPECT_EQ(Call(owner, DeltaRange(9, token, false)).error(), "unknown or expired delta transfer");
}

TEST_F(LimitsTest, RequestsInFlightPastThePeersLimitAreRefusedAndOtherPeersAreServedInTurn) {
  options_.content_limits.requests_per_peer = 4;
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t flood = Dealer(Content());
  zmq::socket_t honest = Dealer(Content());
  gate_.Hold();  // the only worker takes one request and waits
  Send(flood, Range(100, target_));
  ASSERT_TRUE(WaitFor([&] { return gate_.entered() == 1; }));
  for (uint64_t id = 101; id < 110; ++id) Send(flood, Range(id, target_));
  // 100 in the worker and 101..103 queued are in flight; 104..109 refused.
  std::set<uint64_t> refused;
  for (int i = 0; i < 6; ++i) {
    v1::ContentReply reply = Receive<v1::ContentReply>(flood);
    EXPECT_FALSE(reply.ok());
    EXPECT_NE(reply.error().find("more than 4 requests in flight from this peer"),
              std::string::npos)
        << reply.error();
    refused.insert(reply.request_id());
  }
  EXPECT_EQ(refused, (std::set<uint64_t>{104, 105, 106, 107, 108, 109}));
  // Another peer has a budget of its own. Its fifth request is refused, so
  // once that refusal is back its first four are queued.
  for (uint64_t id = 1; id <= 5; ++id) Send(honest, Range(id, target_));
  v1::ContentReply fifth = Receive<v1::ContentReply>(honest);
  EXPECT_EQ(fifth.request_id(), 5u);
  EXPECT_FALSE(fifth.ok());
  gate_.Open();
  for (int i = 0; i < 4; ++i) {
    v1::ContentReply mine = Receive<v1::ContentReply>(honest);
    EXPECT_TRUE(mine.ok()) << mine.error();
    EXPECT_EQ(mine.data(), target_.substr(0, 1024));
    EXPECT_TRUE(Receive<v1::ContentReply>(flood).ok());
  }
  // Round-robin between peers, not one FIFO: the honest peer's requests
  // alternate with the flood's queue instead of waiting behind all of it.
  EXPECT_EQ(gate_.order(), (std::vector<uint64_t>{100, 101, 1, 102, 2, 103, 3, 4}));
}

TEST_F(LimitsTest, OpenTransfersAndScratchBytesPerPeerAreBounded) {
  options_.content_limits.transfers_per_peer = 1;
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t greedy = Dealer(Content());
  const std::string sha = Sha256Of(target_);
  v1::ContentReply first = Call(greedy, DeltaRequest(1, signature_, sha));
  ASSERT_TRUE(first.ok()) << first.error();
  v1::ContentReply second = Call(greedy, DeltaRequest(2, signature_, sha));
  EXPECT_FALSE(second.ok());
  EXPECT_NE(second.error().find("more than 1 open delta transfers for this peer; release one"),
            std::string::npos)
      << second.error();
  // Another peer is not held back by it.
  Status honest = HonestDelta();
  EXPECT_TRUE(honest.ok()) << honest.ToString();
  // Released, the greedy peer may start another.
  EXPECT_TRUE(Call(greedy, DeltaRange(3, first.transfer_token(), true)).ok());
  EXPECT_TRUE(Call(greedy, DeltaRequest(4, signature_, sha)).ok());
}

TEST_F(LimitsTest, ADeltaLargerThanThePeersScratchBytesIsRefusedAndTheFileStillServed) {
  options_.content_limits.scratch_bytes_per_peer = 1000;  // the delta is ~5 kB
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t dealer = Dealer(Content());
  v1::ContentReply reply = Call(dealer, DeltaRequest(1, signature_, Sha256Of(target_)));
  EXPECT_FALSE(reply.ok());
  EXPECT_NE(reply.error().find("outgrew the scratch space left; fetch it whole"), std::string::npos)
      << reply.error();
  EXPECT_EQ(ScratchFiles(), 0u);
  // The whole file is still served.
  v1::ContentReply range = Call(dealer, Range(2, target_));
  EXPECT_TRUE(range.ok()) << range.error();
}

// On the broker's clock (a fake one here: the 60 s TTL passes without
// waiting for it).
TEST_F(LimitsTest, AnUnreadDeltaIsRemovedAfterItsTtl) {
  FakeClock& clock = fake_clock_;
  options_.clock = &clock;
  ASSERT_EQ(options_.content_limits.delta_ttl, std::chrono::seconds(60));
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t dealer = Dealer(Content());
  v1::ContentReply started = Call(dealer, DeltaRequest(1, signature_, Sha256Of(target_)));
  ASSERT_TRUE(started.ok()) << started.error();
  EXPECT_EQ(ScratchFiles(), 1u);
  // Half its TTL later it is still there...
  clock.Advance(std::chrono::seconds(30));
  std::this_thread::sleep_for(milliseconds(300));  // expiry rounds run on the server's thread
  EXPECT_EQ(ScratchFiles(), 1u);
  // ...and never read nor released, it is gone once the TTL has passed.
  clock.Advance(std::chrono::seconds(31));
  EXPECT_TRUE(WaitFor([&] { return ScratchFiles() == 0; }));
  EXPECT_EQ(Call(dealer, DeltaRange(2, started.transfer_token(), false)).error(),
            "unknown or expired delta transfer");
}

TEST_F(LimitsTest, OversizedSmallControlRequestsAreRefusedBeforeParsing) {
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t dealer = Dealer(Control());
  v1::ControlRequest hello;
  hello.set_protocol_version(kProtocolVersion);
  hello.set_request_id(11);
  hello.mutable_hello()->set_client(std::string(200000, 'x'));
  Send(dealer, hello);
  v1::ControlReply reply = Receive<v1::ControlReply>(dealer);
  EXPECT_EQ(reply.request_id(), 11u);
  EXPECT_FALSE(reply.ok());
  EXPECT_NE(reply.error().find("a Hello request of"), std::string::npos) << reply.error();
  EXPECT_NE(reply.error().find("exceeds its cap of 65536"), std::string::npos) << reply.error();

  // Not a protobuf message at all.
  zmq::message_t garbage(std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x0f", 11));
  ASSERT_TRUE(dealer.send(garbage, zmq::send_flags::none));
  EXPECT_FALSE(Receive<v1::ControlReply>(dealer).ok());

  // A small body hidden behind a large one is refused too.
  std::string two = ToFrame(hello).to_string();
  v1::ControlRequest status;
  status.mutable_status();
  two += status.SerializeAsString();
  zmq::message_t frame(two.data(), two.size());
  ASSERT_TRUE(dealer.send(frame, zmq::send_flags::none));
  EXPECT_NE(Receive<v1::ControlReply>(dealer).error().find("carries one body"), std::string::npos);

  // A Publish of the same size is not refused by size (it is parsed and
  // refused as a publish), and a normal Hello still works.
  v1::ControlRequest publish;
  publish.set_protocol_version(kProtocolVersion);
  publish.set_request_id(12);
  publish.mutable_publish()->set_envelope(std::string(200000, 'x'));
  Send(dealer, publish);
  v1::ControlReply published = Receive<v1::ControlReply>(dealer);
  EXPECT_FALSE(published.ok());
  EXPECT_EQ(published.error().find("exceeds its cap"), std::string::npos) << published.error();
  ControlClient control(context_, Control());
  EXPECT_TRUE(control.Hello("honest", kTimeout).ok());
}

TEST_F(LimitsTest, AControlPeerOverItsRateIsRefusedAndOthersAreNot) {
  options_.control_limits.burst = 5;
  options_.control_limits.requests_per_second = 0.001;  // no refill during the test
  ASSERT_NO_FATAL_FAILURE(StartAndPublish());
  zmq::socket_t storm = Dealer(Control());
  for (uint64_t id = 1; id <= 12; ++id) {
    v1::ControlRequest hello;
    hello.set_protocol_version(kProtocolVersion);
    hello.set_request_id(id);
    hello.mutable_hello()->set_client("storm");
    Send(storm, hello);
  }
  size_t ok = 0, refused = 0;
  for (int i = 0; i < 12; ++i) {
    v1::ControlReply reply = Receive<v1::ControlReply>(storm);
    if (reply.ok()) {
      ++ok;
      EXPECT_LE(reply.request_id(), 5u);
    } else {
      ++refused;
      EXPECT_NE(reply.error().find("more than 5 control requests at once"), std::string::npos)
          << reply.error();
    }
  }
  EXPECT_EQ(ok, 5u);
  EXPECT_EQ(refused, 7u);
  // Another peer has its own bucket.
  ControlClient control(context_, Control());
  EXPECT_TRUE(control.Hello("honest", kTimeout).ok());
}

}  // namespace
}  // namespace mirrorcast::testing
