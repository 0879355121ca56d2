// A programmable broker on loopback for attack tests: speaks the broker's
// control, events and content protocol and answers what the test decides,
// as a compromised broker or relay in front of a mirror would. Honest by
// default: it serves a history of signed events (AddEvent), the manifests
// and files they name, and its head in Hello; a test then replaces any
// answer (SetEvents, SetHelloSerial), broadcasts what it likes on the event
// socket, or slows content replies down.
//
// One loop thread owns the sockets; every setter is thread-safe and takes
// effect on the next request.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "core/manifest/manifest.h"
#include "proto/mirrorcast.pb.h"
#include "tests/support/process.h"

namespace mirrorcast::testing {

class HostileBroker {
 public:
  using EventsAnswer = std::function<v1::EventsReply(uint64_t since, uint32_t max)>;

  explicit HostileBroker(std::string repo = "demo");
  ~HostileBroker();

  // Binds control, events and content on 127.0.0.1 port 0 and starts the loop.
  void Start();
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  uint16_t content_port() const { return content_port_; }

  // The honest history: `envelope` is serial `serial`'s signed event. The
  // head (Hello, latest_serial) is the highest serial added.
  void AddEvent(uint64_t serial, std::string envelope);
  // Takes serial `serial` out of the history again.
  void RemoveEvent(uint64_t serial);
  // What an honest broker answers to Events(since, max) from the history.
  v1::EventsReply HonestEvents(uint64_t since, uint32_t max) const;
  // Replaces the answer to Events requests (nullptr: honest again).
  void SetEvents(EventsAnswer answer);
  // The head Hello announces (0: the history's head).
  void SetHelloSerial(uint64_t serial);
  // The key set Hello hands out (a serialized SignedKeySet of `version`;
  // empty: none, as a fixed-keys broker).
  void SetKeySet(std::string signed_key_set, uint64_t version);

  // Serves `m`'s index and chunks by SHA-256, and files by content.
  void ServeManifest(const Manifest& m);
  void ServeFile(const std::string& content);
  // Every content reply goes out this long after its request (a trickling
  // broker; replies are queued, the loop keeps answering control requests).
  void SetContentDelay(std::chrono::milliseconds delay);

  // Published on the event socket every 100 ms until replaced (empty: none).
  void SetBroadcasts(std::vector<std::string> envelopes);
  // The same, made anew for every tick (fresh heartbeats).
  void SetBroadcasts(std::function<std::vector<std::string>()> maker);

  std::vector<v1::Ack> acks() const;
  int events_requests() const { return events_requests_.load(); }

 private:
  void Loop();
  void Control();
  void Content();
  void SendDueReplies();

  const std::string repo_;
  mutable std::mutex mu_;
  std::map<uint64_t, std::string> history_;
  EventsAnswer events_answer_;
  uint64_t hello_serial_ = 0;
  std::string key_set_;
  uint64_t key_set_version_ = 0;
  std::map<std::string, std::string> objects_;  // sha256 -> bytes (manifests and files)
  std::chrono::milliseconds content_delay_{0};
  std::function<std::vector<std::string>()> broadcasts_;
  std::vector<v1::Ack> acks_;
  std::atomic<int> events_requests_{0};
  struct Delayed {
    std::chrono::steady_clock::time_point due;
    std::string peer;
    std::string reply;
  };
  std::deque<Delayed> delayed_;  // loop thread only

  zmq::context_t context_{1};
  zmq::socket_t control_{context_, zmq::socket_type::router};
  zmq::socket_t events_{context_, zmq::socket_type::xpub};
  zmq::socket_t content_{context_, zmq::socket_type::router};
  uint16_t port_ = 0;
  uint16_t events_port_ = 0;
  uint16_t content_port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// path -> content (empty optional: deleted) for one serial.
using Edits = std::vector<std::pair<std::string, std::optional<std::string>>>;

// The RepoChanged of repo "demo" that takes `*manifest` (at `previous`) to
// `serial` with `edits` (`*manifest` is updated), valid for an hour, with
// its files and manifest served by `broker`. The caller may set more fields
// before it signs the payload.
v1::SignedPayload ServedEvent(HostileBroker& broker, Manifest* manifest, uint64_t serial,
                              uint64_t previous, const Edits& edits);

// The command line of a mirrorcast-subscriber following `broker` for repo
// "demo", with its tree and state under `dir` (tree/, state/, origin.pub),
// polling every second; `extra` is appended.
inline std::vector<std::string> HostileSubscriberArgv(const HostileBroker& broker,
                                                      const std::filesystem::path& dir,
                                                      const std::string& id,
                                                      const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {BinPath("mirrorcast-subscriber").string(), "--broker",
                                   broker.address(), "--trust", (dir / "origin.pub").string(),
                                   "--repo", "demo", "--tree", (dir / "tree").string(), "--state",
                                   (dir / "state").string(), "--id", id, "--poll-interval", "1",
                                   "--no-trace-files", "--delete-delay", "0",
                                   // A HostileBroker speaks plain TCP.
                                   "--insecure-plaintext"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

}  // namespace mirrorcast::testing
