#include "tests/integration/cluster.h"

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/net/control_client.h"
#include "tests/support/tree.h"

namespace mirrorcast::testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

Cluster::Cluster(std::string repo) : dir_("mirrorcast-it"), repo_(std::move(repo)), context_(1) {
  fs::create_directories(origin_tree());
  fs::create_directories(dir_.path() / "logs");
  MakeKey("origin");
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

void Cluster::StartSubscriber(const std::string& id, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {BinPath("mirrorcast-subscriber").string(),
                                   "--broker",
                                   broker_address(),
                                   "--trust",
                                   origin_pub().string(),
                                   "--repo",
                                   repo_,
                                   "--tree",
                                   mirror_tree(id).string(),
                                   "--state",
                                   mirror_state(id).string(),
                                   "--id",
                                   id,
                                   "--poll-interval",
                                   "2",
                                   "--log-level",
                                   "debug"};
  ApplyTrustMode(argv);
  argv.insert(argv.end(), extra.begin(), extra.end());
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

RunResult Cluster::Publish(const std::vector<std::string>& extra, std::optional<fs::path> key) {
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
                                   "30"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return Run(argv, 120s);
}

std::string Cluster::PublishOk(const std::vector<std::string>& extra) {
  RunResult r = Publish(extra);
  EXPECT_EQ(r.exit_code, 0) << "publish failed:\n" << r.out << r.err << Logs();
  return r.out;
}

v1::StatusReply Cluster::Status() {
  HostPort broker{"127.0.0.1", broker_port_};
  ControlClient client(context_, broker);
  auto status = client.GetStatus(5000ms);
  if (!status.ok()) throw std::runtime_error("status: " + status.status().ToString());
  return *status;
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
