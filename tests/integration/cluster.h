// A mirrorcast deployment on loopback for integration tests: an origin key,
// an origin tree, a real mirrorcast-broker process on port 0, real
// mirrorcast-subscriber processes, and mirrorcast-publish runs. Status is
// read over the broker's real control socket.
//
// Every socket uses CURVE unless UseInsecurePlaintext() is called before the
// broker starts: CURVE keys made with `mirrorcast keygen --curve` under
// keys/ (broker, publisher, admin, and mirror-<id> for each mirror), and an
// allow-list keys/allow.list naming "publish publisher", "admin admin" and
// "mirror <id>" for each mirror as it is first started (a running broker is
// sent SIGHUP and the reload awaited).
//
// Everything lives in one TempDir; every process is stopped by the
// destructor. Waits are bounded; a timeout fails the test with the logs.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/net/curve.h"
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
  // A CURVE key pair with `mirrorcast keygen --curve` at
  // keys/<name>.curve.{key,pub}; returns the prefix.
  std::filesystem::path MakeCurveKey(const std::string& name);

  // Transport. Call before StartBroker: the whole cluster runs over plain
  // TCP (--insecure-plaintext everywhere).
  void UseInsecurePlaintext();
  bool curve() const { return curve_; }
  std::filesystem::path allow_list() const { return dir_.path() / "keys" / "allow.list"; }
  std::filesystem::path broker_curve_pub() const {
    return dir_.path() / "keys" / "broker.curve.pub";
  }
  // The transport flags of a client: {"--curve-key", ITS KEY, "--broker-key",
  // THE BROKER'S} or {"--insecure-plaintext"}. MirrorTransport makes the
  // mirror's key and lists it first (reloading a running broker).
  std::vector<std::string> MirrorTransport(const std::string& id);
  std::vector<std::string> PublisherTransport() const;
  std::vector<std::string> AdminTransport() const;
  // Appends "ROLE NAME KEY" to the allow-list (no reload).
  void AllowKey(const std::string& role, const std::string& name, const std::string& key);
  // Replaces the allow-list's text (no reload).
  void WriteAllowList(const std::string& text);
  // SIGHUPs the running broker and waits until it logged the reload.
  void ReloadAllowList();
  // Lines of `log` containing `needle`.
  static size_t CountInLog(const std::filesystem::path& log, const std::string& needle);
  std::filesystem::path broker_log() const { return dir_.path() / "logs" / "broker.log"; }

  void StartBroker(const std::vector<std::string>& extra = {});
  void StopBroker();
  // `extra` with its own --curve-key or --insecure-plaintext replaces the
  // default transport flags (as for Publish).
  void StartSubscriber(const std::string& id, const std::vector<std::string>& extra = {});
  // The command line of a subscriber of this cluster with only the required
  // flags (its defaults for everything else) for `tree` and `state`: the
  // mirror's transport unless `extra` has one or `with_transport` is false,
  // then `extra`.
  std::vector<std::string> SubscriberCommand(const std::string& id,
                                             const std::filesystem::path& tree,
                                             const std::filesystem::path& state,
                                             const std::vector<std::string>& extra = {},
                                             bool with_transport = true);
  // The command line StartSubscriber runs: SubscriberCommand for the mirror's
  // tree and state with the test settings (a 2 s poll, debug logs, no trace
  // files and no deletion grace period unless `extra` sets them), then
  // `extra`.
  std::vector<std::string> SubscriberArgv(const std::string& id,
                                          const std::vector<std::string>& extra,
                                          bool with_transport = true);
  // The command line Publish runs, with `timeout_seconds` per broker reply.
  std::vector<std::string> PublishArgv(const std::vector<std::string>& extra = {},
                                       std::optional<std::filesystem::path> key = std::nullopt,
                                       int timeout_seconds = 30) const;
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
  bool curve_ = true;
  std::set<std::string> allowed_mirrors_;
  uint16_t broker_port_ = 0;
  std::unique_ptr<ChildProcess> broker_;
  std::map<std::string, std::unique_ptr<ChildProcess>> subscribers_;
  zmq::context_t context_;
};

// The keys that transport flags (Cluster::MirrorTransport, ...) name, for a
// client made in the test process; nullopt for {"--insecure-plaintext"}.
ClientTransport LoadClientTransport(const std::vector<std::string>& flags);
// Turns "--trust PUBFILE" in a daemon's command line into "--root-key ROOT".
void UseRootKeyInstead(std::vector<std::string>& argv, const std::filesystem::path& root_pub);

// A small yum-style repo: `packages` files under Packages/, repodata/ with a
// repomd.xml naming them, and one `big_bytes` file under isos/.
void MakeSampleRepo(const std::filesystem::path& tree, int packages, size_t big_bytes);

}  // namespace mirrorcast::testing
