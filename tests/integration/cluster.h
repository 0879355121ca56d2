// A mirrorcast deployment on loopback for integration tests: an origin key,
// an origin tree, a real mirrorcast-broker process on port 0, real
// mirrorcast-subscriber processes, and mirrorcast-publish runs. Status is
// read over the broker's real control socket.
//
// Everything lives in one TempDir; every process is stopped by the
// destructor. Waits are bounded; a timeout fails the test with the logs.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "proto/mirrorcast.pb.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir.h"

namespace mirrorcast::testing {

class Cluster {
 public:
  explicit Cluster(std::string repo = "demo");
  ~Cluster();

  const std::filesystem::path& root() const { return dir_.path(); }
  std::filesystem::path origin_tree() const { return dir_.path() / "origin" / repo_; }
  std::filesystem::path mirror_tree(const std::string& id) const;
  std::filesystem::path mirror_state(const std::string& id) const;
  std::filesystem::path origin_key() const { return dir_.path() / "keys" / "origin.key"; }
  std::filesystem::path origin_pub() const { return dir_.path() / "keys" / "origin.pub"; }
  const std::string& repo() const { return repo_; }
  std::string broker_address() const { return "127.0.0.1:" + std::to_string(broker_port_); }
  uint16_t broker_port() const { return broker_port_; }

  // From now on the broker and subscribers start with --root-key `root_pub`
  // (key sets) instead of --trust with the origin key.
  void UseRootKey(std::filesystem::path root_pub) { root_key_ = std::move(root_pub); }

  // Generates a key pair with `mirrorcast keygen` at keys/<name>.{key,pub}.
  std::filesystem::path MakeKey(const std::string& name);

  void StartBroker(const std::vector<std::string>& extra = {});
  void StopBroker();
  void StartSubscriber(const std::string& id, const std::vector<std::string>& extra = {});
  ChildProcess& subscriber(const std::string& id) { return *subscribers_.at(id); }
  int StopSubscriber(const std::string& id);

  // Runs mirrorcast-publish for the origin tree (key: origin unless given).
  RunResult Publish(const std::vector<std::string>& extra = {},
                    std::optional<std::filesystem::path> key = std::nullopt);
  // Publish that must succeed; returns its stdout.
  std::string PublishOk(const std::vector<std::string>& extra = {});

  v1::StatusReply Status();
  // Waits until every listed mirror has ACKed `serial` as applied.
  void WaitForSerial(const std::vector<std::string>& ids, uint64_t serial,
                     std::chrono::seconds timeout = std::chrono::seconds(60));
  std::optional<v1::MirrorStatus> Mirror(const std::string& id);

  // The logs of every process, for failure messages.
  std::string Logs() const;

  // Fault injection. The running broker's process, e.g. for SIGSTOP/SIGCONT
  // (throws std::runtime_error when no broker runs).
  ChildProcess& broker();
  // SIGKILLs the broker (no clean shutdown) and reaps it; StartBroker()
  // afterwards restarts it on the same control port. Returns its exit status.
  int KillBroker();

 private:
  // --trust ORIGIN becomes --root-key ROOT when UseRootKey was called.
  void ApplyTrustMode(std::vector<std::string>& argv) const;

  TempDir dir_;
  std::optional<std::filesystem::path> root_key_;
  std::string repo_;
  uint16_t broker_port_ = 0;
  std::unique_ptr<ChildProcess> broker_;
  std::map<std::string, std::unique_ptr<ChildProcess>> subscribers_;
  zmq::context_t context_;
};

// Turns "--trust PUBFILE" in a daemon's command line into "--root-key ROOT".
void UseRootKeyInstead(std::vector<std::string>& argv, const std::filesystem::path& root_pub);

// A small yum-style repo: `packages` files under Packages/, repodata/ with a
// repomd.xml naming them, and one `big_bytes` file under isos/.
void MakeSampleRepo(const std::filesystem::path& tree, int packages, size_t big_bytes);

}  // namespace mirrorcast::testing
