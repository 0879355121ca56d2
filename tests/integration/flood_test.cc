// One hostile peer floods a real broker while 10 honest mirrors follow
// publishes: delta requests with hostile signatures (1-byte strong sums,
// crafted weak-sum collisions, far more blocks than the file has, silly block
// lengths), range requests it never reads the replies of, oversized and
// malformed control frames, Hello and ACK storms. The honest mirrors must all
// converge, and the broker's peak RSS (VmHWM) stay under kMaxBrokerRss.
// Convergence times with and without the flood and their ratio are printed,
// not asserted (the machine is shared).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "core/crypto/sha256.h"
#include "core/net/control_client.h"
#include "core/net/endpoint.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"
#include "proto/mirrorcast.pb.h"
#include "tests/integration/cluster.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMaxBrokerRss = 256ull << 20;
constexpr size_t kBig = 2u << 20;
constexpr int kMirrors = 10;
constexpr int kPublishesPerRound = 3;

// VmHWM of `pid` in bytes (0 if unreadable).
uint64_t PeakRss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

std::string Signature(uint32_t block, uint32_t strong, size_t records, bool same_weak) {
  std::string sig;
  auto be32 = [&](uint32_t v) {
    for (int i = 3; i >= 0; --i) sig.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  be32(0x72730147);  // RS_RK_BLAKE2_SIG_MAGIC
  be32(block);
  be32(strong);
  sig.reserve(12 + records * (4 + strong));
  for (size_t r = 0; r < records; ++r) {
    be32(same_weak ? 0x5a5a5a5au : static_cast<uint32_t>(r * 2654435761u));
    for (uint32_t k = 0; k < strong; ++k) sig.push_back(static_cast<char>(r * 31 + k));
  }
  return sig;
}

// The hostile peer: several connections to the content and control sockets
// of one broker, sending without pause (bounded by ZeroMQ's queues), reading
// replies only on some of them. Runs on its own thread until stopped.
class Flood {
 public:
  // `transport`: an allow-listed mirror key (a hostile mirror; a key not on
  // the list does not get past the handshake at all).
  Flood(uint16_t control_port, uint16_t content_port, std::string repo, std::string big_sha,
        ClientTransport transport)
      : transport_(std::move(transport)),
        control_(control_port),
        content_(content_port),
        repo_(std::move(repo)),
        big_sha_(std::move(big_sha)) {
    // 1 MiB of 1-byte strong sums (the attack, at the size a parse
    // on the broker costs most while still under its message limit).
    signatures_.push_back(Signature(2048, 1, (1u << 20) / 5, false));
    signatures_.push_back(Signature(256, 8, 60000, true));    // weak-sum collisions
    signatures_.push_back(Signature(256, 8, 200000, false));  // far more blocks than the file
    signatures_.push_back(Signature(16, 8, 1000, false));     // silly block length
  }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  ~Flood() { Stop(); }

  uint64_t sent() const { return sent_; }
  uint64_t refused() const { return refused_; }

 private:
  zmq::message_t ContentFrame(uint64_t id, int kind) {
    v1::ContentRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(id);
    request.set_repo(repo_);
    if (kind < static_cast<int>(signatures_.size())) {
      request.mutable_delta()->set_path("isos/big.iso");
      request.mutable_delta()->set_expected_sha256(big_sha_);
      request.mutable_delta()->set_signature(signatures_[static_cast<size_t>(kind)]);
    } else {
      request.mutable_range()->set_path("isos/big.iso");
      request.mutable_range()->set_sha256(big_sha_);
      request.mutable_range()->set_length(kMaxChunk);
    }
    return ToFrame(request);
  }

  zmq::message_t ControlFrame(uint64_t id, int kind) {
    v1::ControlRequest request;
    request.set_protocol_version(kProtocolVersion);
    request.set_request_id(id);
    if (kind == 0) {
      request.mutable_hello()->set_client(std::string(1u << 20, 'h'));  // oversized
    } else if (kind == 1) {
      request.mutable_ack()->mutable_ack()->set_mirror_id("hostile-" + std::to_string(id % 50));
      request.mutable_ack()->mutable_ack()->set_repo(repo_);
      request.mutable_ack()->mutable_ack()->set_error("forged\npublished repo=x serial=9");
    } else {
      request.mutable_hello()->set_client("storm");
    }
    return ToFrame(request);
  }

  void Drain(zmq::socket_t& socket) {
    for (;;) {
      zmq::message_t reply;
      if (!socket.recv(reply, zmq::recv_flags::dontwait)) return;
      v1::ContentReply parsed;
      if (parsed.ParseFromArray(reply.data(), static_cast<int>(reply.size())) && !parsed.ok()) {
        ++refused_;
      }
    }
  }

  void Run() {
    zmq::context_t context(1);
    auto dealer = [&](uint16_t port) {
      zmq::socket_t s(context, zmq::socket_type::dealer);
      s.set(zmq::sockopt::linger, 0);
      s.set(zmq::sockopt::sndhwm, 200);
      SecureClientSocket(s, transport_);
      s.connect("tcp://127.0.0.1:" + std::to_string(port));
      return s;
    };
    std::vector<zmq::socket_t> content;
    for (int i = 0; i < 4; ++i) content.push_back(dealer(content_));
    zmq::socket_t control = dealer(control_);
    // Built once: the loop only copies them (the sender is on the same
    // machine as the broker and would otherwise measure itself).
    std::vector<std::string> frames;
    for (int kind = 0; kind < 8; ++kind) frames.push_back(ContentFrame(kind + 1, kind).to_string());
    uint64_t id = 1;
    for (uint64_t round = 0; !stop_; ++round) {
      for (size_t c = 0; c < content.size(); ++c) {
        // Hostile signatures (1 to 2.4 MB each) every 20th round, ranges in every one.
        for (int kind = round % 20 == 0 ? 0 : 4; kind < 8; ++kind) {
          zmq::message_t frame(frames[static_cast<size_t>(kind)].data(),
                               frames[static_cast<size_t>(kind)].size());
          if (content[c].send(frame, zmq::send_flags::dontwait)) ++sent_;
        }
        // Half of the connections never read: their replies pile up at the broker.
        if (c % 2 == 0) Drain(content[c]);
      }
      // An oversized Hello every 20th round; ACKs and Hellos in every one.
      for (int i = round % 20 == 0 ? 0 : 1; i < 6; ++i) {
        zmq::message_t frame = ControlFrame(id++, i == 0 ? 0 : 1 + i % 2);
        if (control.send(frame, zmq::send_flags::dontwait)) ++sent_;
      }
      // A frame that is not protobuf at all.
      zmq::message_t garbage(std::string(64, '\xff'));
      if (control.send(garbage, zmq::send_flags::dontwait)) ++sent_;
      Drain(control);
      std::this_thread::sleep_for(5ms);
    }
  }

  ClientTransport transport_;
  uint16_t control_;
  uint16_t content_;
  std::string repo_;
  std::string big_sha_;
  std::vector<std::string> signatures_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> refused_{0};
  std::thread thread_;
};

// Changes a few packages and a few KiB inside the big file (a delta for
// every mirror), publishes, and returns how long until every mirror ACKed.
double PublishAndConverge(Cluster& c, const std::vector<std::string>& mirrors, uint64_t serial) {
  for (int i = 0; i < 3; ++i) {
    WriteFile(c.origin_tree() /
                  ("Packages/s" + std::to_string(serial) + "/n" + std::to_string(i) + ".rpm"),
              RandomBytes(3000, serial * 10 + static_cast<uint64_t>(i)));
  }
  {
    std::fstream f(c.origin_tree() / "isos/big.iso",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>((serial * 100003) % (kBig - 8192)));
    const std::string data = RandomBytes(4096, serial);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  WriteFile(c.origin_tree() / "repodata/repomd.xml",
            "<repomd serial=\"" + std::to_string(serial) + "\"/>\n");
  const auto start = Clock::now();
  const std::string out = c.PublishOk();
  EXPECT_NE(out.find("serial=" + std::to_string(serial)), std::string::npos) << out;
  c.WaitForSerial(mirrors, serial, 180s);
  return std::chrono::duration<double>(Clock::now() - start).count();
}

TEST(Flood, HonestMirrorsConvergeWhileOnePeerFloodsDeltasAndOversizedFrames) {
  Cluster c;
  MakeSampleRepo(c.origin_tree(), 40, kBig);
  c.StartBroker();
  std::vector<std::string> mirrors;
  for (int i = 0; i < kMirrors; ++i) mirrors.push_back("m" + std::to_string(i));
  for (const auto& id : mirrors) c.StartSubscriber(id);
  EXPECT_NE(c.PublishOk().find("serial=1"), std::string::npos);
  c.WaitForSerial(mirrors, 1, 180s);

  uint64_t serial = 1;
  double quiet = 0;
  for (int i = 0; i < kPublishesPerRound; ++i) quiet += PublishAndConverge(c, mirrors, ++serial);

  zmq::context_t context(1);
  const ClientTransport hostile = LoadClientTransport(c.MirrorTransport("hostile"));
  ControlClient control(context, HostPort{"127.0.0.1", c.broker_port()}, hostile);
  auto hello = control.Hello("flood-test", 10000ms);
  ASSERT_TRUE(hello.ok()) << hello.status().ToString();
  auto big_sha = Sha256File(c.origin_tree() / "isos/big.iso");
  ASSERT_TRUE(big_sha.ok());
  Flood flood(c.broker_port(), static_cast<uint16_t>(hello->content_port()), c.repo(), *big_sha,
              hostile);
  flood.Start();
  std::this_thread::sleep_for(1s);  // the flood is in full swing before the publish
  double flooded = 0;
  for (int i = 0; i < kPublishesPerRound; ++i) flooded += PublishAndConverge(c, mirrors, ++serial);
  flood.Stop();

  const uint64_t rss = PeakRss(c.broker().pid());
  EXPECT_GT(rss, 0u);
  EXPECT_LT(rss, kMaxBrokerRss) << "broker peak RSS " << rss / (1 << 20) << " MiB";
  EXPECT_GT(flood.refused(), 0u);  // the flood was answered, and refused
  // The honest path still works after the flood: one more publish.
  PublishAndConverge(c, mirrors, ++serial);
  // The broker is still the one that started.
  EXPECT_TRUE(c.broker().Running());

  // A forged log line in an ACK's error text never reaches the log as a
  // line, and refusals are logged a few times, not once per request.
  std::ifstream log(c.broker().log_path());
  std::string line;
  size_t refusal_lines = 0;
  while (std::getline(log, line)) {
    EXPECT_EQ(line.find("broker: published repo=x"), std::string::npos) << line;
    if (line.find(" refused") != std::string::npos) ++refusal_lines;
  }
  EXPECT_LT(refusal_lines, 200u);
  std::printf(
      "[flood] %d mirrors, %d publishes each: converged in %.2f s quiet, %.2f s under flood "
      "(ratio %.2f); hostile messages sent %llu, refusals read %llu, refusal log lines %zu; "
      "broker VmHWM %.1f MiB (bound %llu MiB)\n",
      kMirrors, kPublishesPerRound, quiet, flooded, quiet > 0 ? flooded / quiet : 0.0,
      static_cast<unsigned long long>(flood.sent()),
      static_cast<unsigned long long>(flood.refused()), refusal_lines,
      static_cast<double>(rss) / (1 << 20), static_cast<unsigned long long>(kMaxBrokerRss >> 20));
}

}  // namespace
}  // namespace mirrorcast::testing
