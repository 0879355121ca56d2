#include "broker/relay.h"

#include <system_error>
#include <zmq.hpp>

#include "core/base/log.h"
#include "core/net/control_client.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

namespace fs = std::filesystem;
using Millis = std::chrono::milliseconds;

namespace {

// Repos one relay follows at most (each is a loop thread and its sockets).
constexpr size_t kMaxRelayedRepos = 256;
// Heartbeats waiting for the control thread (it takes them every turn).
constexpr size_t kMaxQueuedHeartbeats = 1024;
// A follower whose loop failed is started again after this pause.
constexpr std::chrono::seconds kRestartPause{10};

}  // namespace

Status Relay::Start() {
  stop_ = false;
  std::error_code ec;
  fs::create_directories(options_.state_root, ec);
  if (ec) return Status::IoError("create " + options_.state_root.string() + ": " + ec.message());
  for (const auto& dir : fs::directory_iterator(options_.state_root, ec)) {
    const std::string repo = dir.path().filename().string();
    if (!dir.is_directory() || !ValidateRepoName(repo).ok()) continue;
    if (!fs::exists(dir.path() / "subscriber.db")) continue;
    Follow(repo);
  }
  if (ec) return Status::IoError("read " + options_.state_root.string() + ": " + ec.message());
  discovery_ = std::thread([this] { DiscoveryLoop(); });
  return Status::Ok();
}

void Relay::Stop() {
  stop_ = true;
  if (discovery_.joinable()) discovery_.join();
  std::map<std::string, std::shared_ptr<Subscriber>> followers;
  {
    std::lock_guard lock(mu_);
    followers.swap(followers_);
  }
  for (auto& [repo, follower] : followers) follower->Stop();
}

bool Relay::Follow(const std::string& repo) {
  SubscriberOptions o;
  o.broker = options_.upstream.at(0);
  o.transport = options_.transport.at(0);
  for (size_t i = 1; i < options_.upstream.size(); ++i) {
    o.other_brokers.push_back({options_.upstream[i], options_.transport[i]});
  }
  o.failover_after = options_.failover_after;
  o.trust = options_.trust;
  o.root_keys = options_.root_keys;
  o.heartbeat_trust = options_.heartbeat_trust;
  o.stale_after = options_.stale_after;
  o.repo = repo;
  o.tree = options_.tree_root / repo;
  o.state = StateOf(repo);
  o.id = options_.id;
  o.poll_interval = options_.poll_interval;
  o.after_signature = options_.after_signature;
  o.clock = options_.clock;
  o.notify_systemd = false;  // the broker speaks for the process
  o.on_heartbeat = [this, repo](const std::string& envelope) {
    std::lock_guard lock(mu_);
    if (heartbeats_.size() >= kMaxQueuedHeartbeats) heartbeats_.pop_front();
    heartbeats_.emplace_back(repo, envelope);
  };
  auto follower = std::make_shared<Subscriber>(std::move(o));
  if (Status s = follower->Start(); !s.ok()) {
    MC_LOG(error) << "relay: cannot follow " << repo << ": " << s.ToString();
    return false;
  }
  MC_LOG(info) << "relay: following " << repo << " from " << options_.upstream[0].ToString()
               << (options_.upstream.size() > 1
                       ? " (and " + std::to_string(options_.upstream.size() - 1) + " more upstream)"
                       : "");
  std::lock_guard lock(mu_);
  followers_[repo] = std::move(follower);
  return true;
}

void Relay::DiscoveryLoop() {
  zmq::context_t context(1);
  auto next = std::chrono::steady_clock::now();
  bool warned = false;
  while (!stop_) {
    SendAcks(context);
    if (std::chrono::steady_clock::now() < next) {
      std::this_thread::sleep_for(Millis(100));
      continue;
    }
    // Quick at first (a new relay learns its repos at once), then every poll.
    next = std::chrono::steady_clock::now() +
           std::min<std::chrono::seconds>(options_.poll_interval, std::chrono::seconds(5));
    // A follower whose loop ended on an error is started again after a pause.
    std::vector<std::string> restart;
    {
      std::lock_guard lock(mu_);
      const auto now = std::chrono::steady_clock::now();
      for (auto& [repo, follower] : followers_) {
        if (!follower->failed()) continue;
        auto [at, fresh] = restart_after_.try_emplace(repo, now + kRestartPause);
        if (fresh || now < at->second) continue;
        restart_after_.erase(at);
        restart.push_back(repo);
      }
    }
    for (const auto& repo : restart) {
      std::shared_ptr<Subscriber> old;
      {
        std::lock_guard lock(mu_);
        old = std::move(followers_[repo]);
        followers_.erase(repo);
      }
      if (old) old->Stop();
      MC_LOG(warning) << "relay: the follower of " << repo << " failed; starting it again";
      Follow(repo);
    }
    for (size_t i = 0; i < options_.upstream.size() && !stop_; ++i) {
      ControlClient control(context, options_.upstream[i], options_.transport[i]);
      v1::HelloRequest hello;
      hello.set_client("relay " + options_.id);
      auto reply = control.Hello(hello, Millis(5000));
      if (!reply.ok()) continue;
      warned = false;
      size_t followed = 0;
      {
        std::lock_guard lock(mu_);
        followed = followers_.size();
      }
      for (const auto& r : reply->repos()) {
        if (stop_) break;
        if (!ValidateRepoName(r.repo()).ok()) {
          MC_LOG(warning) << "relay: upstream " << options_.upstream[i].ToString()
                          << " names a bad repo " << EscapeForLog(r.repo(), 64) << "; ignored";
          continue;
        }
        {
          std::lock_guard lock(mu_);
          if (followers_.count(r.repo())) continue;
        }
        if (followed >= kMaxRelayedRepos) {
          MC_LOG(warning) << "relay: already following " << kMaxRelayedRepos
                          << " repos; not following " << r.repo();
          break;
        }
        if (Follow(r.repo())) ++followed;
      }
      break;
    }
    if (!warned && !stop_) {
      std::lock_guard lock(mu_);
      if (followers_.empty()) {
        MC_LOG(info) << "relay: no upstream has answered yet; still trying";
        warned = true;
      }
    }
  }
}

bool Relay::OfferAcks(v1::RelayAcksRequest batch) {
  std::lock_guard lock(mu_);
  if (acks_ || acks_confirmed_) return false;
  acks_ = std::move(batch);
  return true;
}

bool Relay::TakeConfirmed() {
  std::lock_guard lock(mu_);
  const bool confirmed = acks_confirmed_;
  acks_confirmed_ = false;
  return confirmed;
}

void Relay::SendAcks(zmq::context_t& context) {
  std::optional<v1::RelayAcksRequest> batch;
  {
    std::lock_guard lock(mu_);
    if (!acks_ || std::chrono::steady_clock::now() < acks_next_try_) return;
    batch = acks_;
  }
  Status last = Status::Unavailable("no upstream");
  for (size_t i = 0; i < options_.upstream.size() && !stop_; ++i) {
    ControlClient control(context, options_.upstream[i], options_.transport[i]);
    auto recorded = control.RelayAcks(*batch, Millis(5000));
    if (!recorded.ok()) {
      last = recorded.status();
      continue;
    }
    if (*recorded < static_cast<uint32_t>(batch->acks_size())) {
      MC_LOG(warning) << "relay: upstream " << options_.upstream[i].ToString() << " recorded "
                      << *recorded << " of " << batch->acks_size()
                      << " forwarded ACKs (it logs why it refused the others)";
    } else {
      MC_LOG(debug) << "relay: forwarded " << *recorded << " ACKs to "
                    << options_.upstream[i].ToString();
    }
    if (acks_warned_) MC_LOG(info) << "relay: forwarding ACKs upstream works again";
    std::lock_guard lock(mu_);
    acks_.reset();
    acks_confirmed_ = true;
    acks_backoff_ = Millis(1000);
    acks_warned_ = false;
    return;
  }
  if (!acks_warned_) {
    MC_LOG(warning) << "relay: cannot forward " << batch->acks_size()
                    << " ACKs upstream: " << EscapeForLog(last.ToString(), 512)
                    << " (kept; retrying)";
    acks_warned_ = true;
  }
  std::lock_guard lock(mu_);
  acks_next_try_ = std::chrono::steady_clock::now() + acks_backoff_;
  acks_backoff_ = std::min<Millis>(acks_backoff_ * 2, std::chrono::seconds(30));
}

void Relay::ReloadTrust() {
  std::vector<std::shared_ptr<Subscriber>> followers;
  {
    std::lock_guard lock(mu_);
    for (auto& [repo, follower] : followers_) followers.push_back(follower);
  }
  // Outside the lock: a follower takes it between loop turns.
  for (auto& follower : followers) (void)follower->ReloadTrust();
}

std::vector<std::pair<std::string, uint64_t>> Relay::Applied() const {
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::string, uint64_t>> out;
  for (const auto& [repo, follower] : followers_) out.emplace_back(repo, follower->serial());
  return out;
}

std::vector<std::string> Relay::Stale() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const auto& [repo, follower] : followers_) {
    if (follower->stale()) out.push_back(repo);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> Relay::TakeHeartbeats() {
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::string, std::string>> out(heartbeats_.begin(), heartbeats_.end());
  heartbeats_.clear();
  return out;
}

std::string Relay::Describe() const {
  std::string out = "relay of";
  for (const auto& u : options_.upstream) out += " " + u.ToString();
  return out;
}

}  // namespace mirrorcast
