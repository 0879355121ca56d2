#include "tests/integration/cluster.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/net/control_client.h"
#include "core/net/curve.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

bool HasTransportFlag(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--curve-key" || a == "--insecure-plaintext") return true;
  }
  return false;
}

}  // namespace

Cluster::Cluster(std::string repo) : dir_("mirrorcast-it"), repo_(std::move(repo)), context_(1) {
  fs::create_directories(origin_tree());
  fs::create_directories(dir_.path() / "logs");
  MakeKey("origin");
  MakeCurveKey("broker");
  MakeCurveKey("publisher");
  MakeCurveKey("admin");
  WriteAllowList("# roles: publish, mirror, relay, admin\n");
  AllowKey("publish", "publisher", "publisher.curve.pub");
  AllowKey("admin", "admin", (dir_.path() / "keys" / "admin.curve.pub").string());
}

fs::path Cluster::MakeCurveKey(const std::string& name) {
  fs::create_directories(dir_.path() / "keys");
  const fs::path prefix = dir_.path() / "keys" / name;
  RunResult r =
      Run({BinPath("mirrorcast").string(), "keygen", "--curve", "--out", prefix.string()}, 30s);
  if (r.exit_code != 0) throw std::runtime_error("keygen --curve failed: " + r.err);
  return prefix;
}

void Cluster::UseInsecurePlaintext() {
  if (broker_) throw std::runtime_error("UseInsecurePlaintext() after the broker started");
  curve_ = false;
}

std::vector<std::string> Cluster::MirrorTransport(const std::string& id) {
  if (!curve_) return {"--insecure-plaintext"};
  const std::string name = "mirror-" + id;
  if (allowed_mirrors_.insert(id).second) {
    MakeCurveKey(name);
    AllowKey("mirror", id, name + ".curve.pub");
    if (broker_) ReloadAllowList();
  }
  return {"--curve-key", (dir_.path() / "keys" / (name + ".curve.key")).string(), "--broker-key",
          broker_curve_pub().string()};
}

std::vector<std::string> Cluster::PublisherTransport() const {
  if (!curve_) return {"--insecure-plaintext"};
  return {"--curve-key", (dir_.path() / "keys" / "publisher.curve.key").string(), "--broker-key",
          broker_curve_pub().string()};
}

std::vector<std::string> Cluster::AdminTransport() const {
  if (!curve_) return {"--insecure-plaintext"};
  return {"--curve-key", (dir_.path() / "keys" / "admin.curve.key").string(), "--broker-key",
          broker_curve_pub().string()};
}

void Cluster::AllowKey(const std::string& role, const std::string& name, const std::string& key) {
  std::ofstream out(allow_list(), std::ios::app);
  out << role << " " << name << " " << key << "\n";
  if (!out) throw std::runtime_error("cannot append to " + allow_list().string());
}

void Cluster::WriteAllowList(const std::string& text) { WriteFile(allow_list(), text, 0644); }

size_t Cluster::CountInLog(const fs::path& log, const std::string& needle) {
  std::ifstream in(log);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) != std::string::npos) ++n;
  }
  return n;
}

void Cluster::ReloadAllowList() {
  const size_t before = CountInLog(broker_log(), "allow-list reload");
  broker().Signal(SIGHUP);
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (CountInLog(broker_log(), "allow-list reload") <= before) {
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("the broker did not log an allow-list reload within 20 s\n" +
                               Logs());
    }
    std::this_thread::sleep_for(20ms);
  }
}

Cluster::~Cluster() {
  for (auto& [id, p] : subscribers_) p->Stop(5s);
  if (broker_) broker_->Stop(5s);
}

fs::path Cluster::mirror_tree(const std::string& id) const { return dir_.path() / "mirrors" / id; }
fs::path Cluster::mirror_state(const std::string& id) const {
  return dir_.path() / "mirror-state" / id;
}

fs::path Cluster::MakeKey(const std::string& name) {
  fs::create_directories(dir_.path() / "keys");
  const fs::path prefix = dir_.path() / "keys" / name;
  RunResult r = Run({BinPath("mirrorcast").string(), "keygen", "--out", prefix.string()}, 30s);
  if (r.exit_code != 0) throw std::runtime_error("keygen failed: " + r.err);
  return prefix;
}

void Cluster::StartBroker(const std::vector<std::string>& extra) {
  const fs::path port_file = dir_.path() / "broker.port";
  fs::remove(port_file);
  std::vector<std::string> argv = {BinPath("mirrorcast-broker").string(),
                                   "--listen",
                                   broker_port_ ? broker_address() : "127.0.0.1:0",
                                   "--port-file",
                                   port_file.string(),
                                   "--state",
                                   (dir_.path() / "broker-state").string(),
                                   "--tree-root",
                                   (dir_.path() / "origin").string(),
                                   "--trust",
                                   origin_pub().string(),
                                   "--log-level",
                                   "debug"};
  if (!HasTransportFlag(extra)) {
    if (curve_) {
      for (const std::string& a :
           {std::string("--curve-key"), (dir_.path() / "keys" / "broker.curve.key").string(),
            std::string("--allow"), allow_list().string()}) {
        argv.push_back(a);
      }
    } else {
      argv.push_back("--insecure-plaintext");
    }
  }
  ApplyTrustMode(argv);
  argv.insert(argv.end(), extra.begin(), extra.end());
  broker_ = std::make_unique<ChildProcess>();
  broker_->Start(argv, dir_.path() / "logs" / "broker.log");
  const std::string address = WaitForFile(port_file, 20s);
  broker_port_ = static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

void UseRootKeyInstead(std::vector<std::string>& argv, const fs::path& root_pub) {
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "--trust") {
      argv[i] = "--root-key";
      argv[i + 1] = root_pub.string();
    }
  }
}

void Cluster::ApplyTrustMode(std::vector<std::string>& argv) const {
  if (root_key_) UseRootKeyInstead(argv, *root_key_);
}

void Cluster::StopBroker() {
  if (broker_) broker_->Stop(10s);
  broker_.reset();
}

std::vector<std::string> Cluster::SubscriberCommand(const std::string& id, const fs::path& tree,
                                                    const fs::path& state,
                                                    const std::vector<std::string>& extra,
                                                    bool with_transport) {
  std::vector<std::string> argv = {BinPath("mirrorcast-subscriber").string(),
                                   "--broker",
                                   broker_address(),
                                   "--trust",
                                   origin_pub().string(),
                                   "--repo",
                                   repo_,
                                   "--tree",
                                   tree.string(),
                                   "--state",
                                   state.string(),
                                   "--id",
                                   id};
  ApplyTrustMode(argv);
  if (with_transport && !HasTransportFlag(extra)) {
    for (const std::string& a : MirrorTransport(id)) argv.push_back(a);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

std::vector<std::string> Cluster::SubscriberArgv(const std::string& id,
                                                 const std::vector<std::string>& extra,
                                                 bool with_transport) {
  std::vector<std::string> settings = {"--poll-interval", "2", "--log-level", "debug"};
  // Trees are compared with the origin's: no trace files and no grace period
  // for deletions unless a test asks for them.
  if (std::find(extra.begin(), extra.end(), "--trace-name") == extra.end()) {
    settings.push_back("--no-trace-files");
  }
  if (std::find(extra.begin(), extra.end(), "--delete-delay") == extra.end()) {
    settings.insert(settings.end(), {"--delete-delay", "0"});
  }
  settings.insert(settings.end(), extra.begin(), extra.end());
  return SubscriberCommand(id, mirror_tree(id), mirror_state(id), settings, with_transport);
}

void Cluster::StartSubscriber(const std::string& id, const std::vector<std::string>& extra) {
  const std::vector<std::string> argv = SubscriberArgv(id, extra);
  auto child = std::make_unique<ChildProcess>();
  child->Start(argv, dir_.path() / "logs" / (id + ".log"));
  subscribers_[id] = std::move(child);
}

int Cluster::StopSubscriber(const std::string& id) {
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return -1;
  int status = it->second->Stop(10s);
  subscribers_.erase(it);
  return status;
}

std::vector<std::string> Cluster::PublishArgv(const std::vector<std::string>& extra,
                                              std::optional<fs::path> key,
                                              int timeout_seconds) const {
  std::vector<std::string> argv = {BinPath("mirrorcast-publish").string(),
                                   "--broker",
                                   broker_address(),
                                   "--key",
                                   (key ? *key : origin_key()).string(),
                                   "--repo",
                                   repo_,
                                   "--tree",
                                   origin_tree().string(),
                                   "--state",
                                   (dir_.path() / "publish-state").string(),
                                   "--timeout",
                                   std::to_string(timeout_seconds)};
  if (!HasTransportFlag(extra)) {
    for (const std::string& a : PublisherTransport()) argv.push_back(a);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

RunResult Cluster::Publish(const std::vector<std::string>& extra, std::optional<fs::path> key) {
  return Run(PublishArgv(extra, key), 120s);
}

std::string Cluster::PublishOk(const std::vector<std::string>& extra) {
  RunResult r = Publish(extra);
  EXPECT_EQ(r.exit_code, 0) << "publish failed:\n" << r.out << r.err << Logs();
  return r.out;
}

v1::StatusReply Cluster::Status() {
  HostPort broker{"127.0.0.1", broker_port_};
  // One admin key for every poll: its control budget (--control-rate) is
  // shared by all of them, so a poll refused for the rate waits and asks again.
  for (int attempt = 0;; ++attempt) {
    ControlClient client(context_, broker, LoadClientTransport(AdminTransport()));
    auto status = client.GetStatus(5000ms);
    if (status.ok()) return *status;
    const bool rate = status.status().message().find("retry later") != std::string::npos;
    if (!rate || attempt >= 50) {
      throw std::runtime_error("status: " + status.status().ToString());
    }
    std::this_thread::sleep_for(100ms);
  }
}

std::optional<v1::MirrorStatus> Cluster::Mirror(const std::string& id) {
  const v1::StatusReply status = Status();
  for (const auto& m : status.mirrors()) {
    if (m.mirror_id() == id && m.repo() == repo_) return m;
  }
  return std::nullopt;
}

void Cluster::WaitForSerial(const std::vector<std::string>& ids, uint64_t serial,
                            std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    size_t done = 0;
    const v1::StatusReply status = Status();
    for (const auto& m : status.mirrors()) {
      if (m.repo() != repo_ || m.serial() < serial || m.state() != v1::ACK_APPLIED) continue;
      if (std::find(ids.begin(), ids.end(), m.mirror_id()) != ids.end()) ++done;
    }
    if (done == ids.size()) return;
    if (std::chrono::steady_clock::now() > deadline) {
      FAIL() << "mirrors did not reach serial " << serial << " within " << timeout.count() << " s\n"
             << Logs();
      return;
    }
    std::this_thread::sleep_for(50ms);
  }
}

std::string Cluster::Logs() const {
  std::ostringstream out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_.path() / "logs", ec)) {
    std::ifstream in(entry.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.size() > 8000) text = "...\n" + text.substr(text.size() - 8000);
    out << "----- " << entry.path().filename().string() << "\n" << text << "\n";
  }
  return out.str();
}

ChildProcess& Cluster::broker() {
  if (!broker_) throw std::runtime_error("no broker is running");
  return *broker_;
}

int Cluster::KillBroker() {
  if (!broker_) return -1;
  broker_->Signal(SIGKILL);
  const std::optional<int> status = broker_->Wait(10s);
  if (!status) throw std::runtime_error("broker survived SIGKILL for 10 s");
  broker_.reset();
  return *status;
}

ClientTransport LoadClientTransport(const std::vector<std::string>& flags) {
  if (flags.size() != 4 || flags[0] != "--curve-key" || flags[2] != "--broker-key") {
    return std::nullopt;
  }
  auto own = LoadCurveSecretFile(flags[1]);
  auto broker_key = LoadCurvePublicFile(flags[3]);
  if (!own.ok()) throw std::runtime_error(own.status().ToString());
  if (!broker_key.ok()) throw std::runtime_error(broker_key.status().ToString());
  return ClientCurve{*own, *broker_key};
}

void MakeSampleRepo(const fs::path& tree, int packages, size_t big_bytes) {
  std::ostringstream repomd;
  repomd << "<repomd>\n";
  for (int i = 0; i < packages; ++i) {
    const std::string name =
        "Packages/p" + std::to_string(i % 7) + "/pkg-" + std::to_string(i) + ".rpm";
    WriteFile(tree / name, RandomBytes(1000 + (i * 37) % 5000, 1000 + i));
    repomd << "  <package href=\"" << name << "\"/>\n";
  }
  repomd << "</repomd>\n";
  WriteFile(tree / "repodata" / "primary.xml.gz", RandomBytes(20000, 7));
  WriteFile(tree / "repodata" / "repomd.xml", repomd.str());
  if (big_bytes > 0) WriteFile(tree / "isos" / "big.iso", RandomBytes(big_bytes, 99));
}

}  // namespace mirrorcast::testing
