#include "core/mirror/subscriber.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <set>
#include <system_error>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/base/thread_guard.h"
#include "core/cli/signals.h"
#include "core/fs/lock.h"
#include "core/mirror/follower.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

namespace fs = std::filesystem;
using Millis = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr Millis kControlTimeout{5000};

}  // namespace

// Everything the loop thread owns. Created and used on one thread only. The
// apply itself is the Follower's (core/mirror); the session owns the sockets,
// heartbeats and ACK delivery.
class Subscriber::Session : public BrokerLink {
 public:
  Session(const SubscriberOptions& options, std::atomic<bool>& stop, std::atomic<uint64_t>& serial,
          std::atomic<bool>& stale, ServiceNotifier& service, TrustReload& reload)
      : options_(options),
        stop_(stop),
        serial_out_(serial),
        stale_out_(stale),
        service_(service),
        reload_(reload),
        context_(1),
        instance_(NewInstance()) {}

  // Opens state, finishes an interrupted apply, adopts an unknown tree, and
  // connects (retrying until the broker answers or Stop()).
  // `once`: give up after options.once_connect_timeout (SyncOnce).
  Status Init(bool once = false);
  // Brings the tree to the broker's latest serial. Ok when at the latest.
  Status CatchUp() {
    return follower_->CatchUp(*this, [this] { return ShouldStop(); });
  }
  // Serves events until Stop().
  void Serve();
  void FlushAcks();

  // BrokerLink: Hello, reattaching when the broker's event or content port
  // moved (it restarted elsewhere).
  Result<uint64_t> Head() override;
  ControlClient& control() override { return *control_; }
  ContentClient& content() override { return *content_; }

 private:
  Status Connect(bool once);
  // (Re)creates the content and event sockets for the ports in `hello`.
  void Attach(const v1::HelloReply& hello);
  // Handles any envelope from the event socket: events, heartbeats.
  void OnBroadcast(const std::string& envelope, bool* need_sync);
  void CheckFreshness();
  // Hands the broker's key set to the follower (a refusal is its to report).
  void OfferKeySet(const v1::HelloReply& hello) {
    if (Status s = follower_->OfferKeySet(hello.key_set()); !s.ok()) {
      MC_LOG(debug) << "key set not taken: " << s.ToString();
    }
  }
  // A broadcast named `serial`, newer than the tree.
  void NoteNewer(uint64_t serial, bool* need_sync) {
    *need_sync = true;
    if (serial > highest_seen_) {
      highest_seen_ = serial;
      poked_ = true;
    }
  }
  // Polled by every loop and between the steps of long work, so it is also
  // the watchdog's sign of progress.
  bool ShouldStop() const {
    service_.Progress();
    return stop_.load();
  }
  // A SIGHUP's trust reload, taken between loop turns.
  void MaybeReloadTrust();
  // One line for systemctl status.
  void UpdateServiceStatus();
  static bool Unreachable(const Status& s) {
    return s.code() == Status::Code::kUnavailable || s.code() == Status::Code::kTimeout;
  }
  // One line when the broker stops answering (a poll or a catch-up could not
  // reach it), one when any call reaches it again.
  void NoteBroker(const Status& s) {
    if (Unreachable(s) && !broker_lost_) {
      lost_since_ = clock().Steady();
      MC_LOG(warning) << "lost the broker " << broker().ToString() << ": " << s.ToString()
                      << " (the tree stays at serial " << follower_->serial() << "; still trying)";
      broker_lost_ = true;
    } else if (s.ok() && broker_lost_) {
      MC_LOG(info) << "broker " << broker().ToString()
                   << " answers again (this mirror is at serial " << follower_->serial() << ")";
      broker_lost_ = false;
    }
  }
  bool broker_lost_ = false;  // the broker was found unreachable (and that was logged)
  // A Hello that is also this mirror's liveness report (its poll): who it
  // is, its repo and serial, and this process's instance.
  Result<v1::HelloReply> Hello() { return HelloOn(*control_, kControlTimeout); }
  Result<v1::HelloReply> HelloOn(ControlClient& control, Millis timeout) {
    v1::HelloRequest hello;
    hello.set_client("subscriber " + options_.id);
    hello.set_mirror_id(options_.id);
    hello.set_repo(options_.repo);
    hello.set_serial(follower_ ? follower_->serial() : 0);
    hello.set_instance(instance_);
    return control.Hello(hello, timeout);
  }
  // The brokers: 0 is --broker, then options_.other_brokers in order.
  size_t broker_count() const { return 1 + options_.other_brokers.size(); }
  const HostPort& BrokerAt(size_t i) const {
    return i == 0 ? options_.broker : options_.other_brokers[i - 1].address;
  }
  const ClientTransport& TransportAt(size_t i) const {
    return i == 0 ? options_.transport : options_.other_brokers[i - 1].transport;
  }
  const HostPort& broker() const { return BrokerAt(current_); }
  const ClientTransport& transport() const { return TransportAt(current_); }
  // Makes broker `i` the current one if it answers a Hello; the mirror then
  // tells it its serial (an ACK) and catches up from it. False (nothing
  // changed) when it does not answer.
  bool SwitchTo(size_t i, const std::string& why);
  // Several brokers: the current one unreachable or stale for
  // failover_after moves to the next that answers.
  void MaybeFailOver(bool* need_sync);
  // Serving from another broker: the first taken back once it answers with
  // a head at least the mirror's serial.
  void MaybeGoBack(bool* need_sync);
  size_t current_ = 0;
  SteadyClock::time_point lost_since_{};     // when broker_lost_ began
  SteadyClock::time_point trouble_since_{};  // lost, stale or refused, for failover
  // The current broker's last catch-up was refused (what it offers fails
  // verification: a bad signature, a rollback, content that does not match):
  // a reason to fail over like an unreachable one. After such a switch the
  // first broker is not taken back before refused_back_after_.
  bool refused_ = false;
  SteadyClock::time_point refused_back_after_{};
  // Random per process: the broker tells two processes with one id apart.
  static std::string NewInstance() {
    std::random_device random;
    char out[17];
    std::snprintf(out, sizeof out, "%08x%08x", random(), random());
    return out;
  }
  const Clock& clock() const { return options_.clock ? *options_.clock : Clock::Real(); }

  const SubscriberOptions& options_;
  std::atomic<bool>& stop_;
  std::atomic<uint64_t>& serial_out_;
  std::atomic<bool>& stale_out_;
  ServiceNotifier& service_;
  TrustReload& reload_;
  // Heartbeat signers this mirror does not trust, said once each.
  std::set<std::string> untrusted_heartbeat_keys_;
  zmq::context_t context_;
  const std::string instance_;
  std::unique_ptr<Follower> follower_;
  std::unique_ptr<ControlClient> control_;
  std::unique_ptr<ContentClient> content_;
  std::unique_ptr<zmq::socket_t> events_;
  uint32_t events_port_ = 0;
  uint32_t content_port_ = 0;
  uint64_t highest_seen_ = 0;  // newest serial any broadcast named
  bool poked_ = false;         // a broadcast named a serial not seen before

  // The newest key-set version a broadcast named (unverified: a hint to
  // fetch the broker's key set, once per version).
  uint64_t highest_keyset_seen_ = 0;
  // Freshness: only with heartbeat keys configured.
  int64_t last_heartbeat_issued_ = 0;
  int64_t started_unix_ = 0;
  bool stale_ = false;
  SteadyClock::time_point next_ack_try_{};
  Millis ack_backoff_{1000};
  std::string last_failure_;  // the last catch-up failure logged
};

Status Subscriber::Session::Init(bool once) {
  MC_ASSIGN_OR_RETURN(KeyTrust trust,
                      LoadKeyTrust(options_.trust, options_.heartbeat_trust, options_.root_keys));
  started_unix_ = clock().NowUnix();
  FollowerOptions follow;
  follow.repo = options_.repo;
  follow.mirror_id = options_.id;
  follow.tree = options_.tree;
  follow.state = options_.state;
  follow.staging = options_.staging;
  follow.metadata_patterns = options_.metadata_patterns;
  follow.delta_min_bytes = options_.delta_min_bytes;
  follow.delete_delay = options_.delete_delay;
  follow.trace_name = options_.trace_name;
  follow.after_signature = options_.after_signature;
  follow.clock = options_.clock;
  MC_ASSIGN_OR_RETURN(follower_, Follower::Open(std::move(follow), std::move(trust)));
  follower_->on_applied = [this](uint64_t serial) {
    serial_out_ = serial;
    if (options_.on_applied) options_.on_applied(serial);
  };
  follower_->on_ack_queued = [this] {
    next_ack_try_ = SteadyClock::time_point{};  // a new ACK goes out right away
    if (control_) FlushAcks();
  };
  serial_out_ = follower_->serial();
  MC_LOG(info) << "mirror " << options_.id << " repo=" << options_.repo
               << " at serial=" << follower_->serial() << " tree=" << options_.tree.string();
  // The tree is consistent (an interrupted apply finished): ready, even
  // while the broker cannot be reached yet.
  if (!once && options_.notify_systemd) {
    service_.Ready("repo " + options_.repo + " at serial " + std::to_string(follower_->serial()) +
                   ", connecting to " + broker().ToString());
  }
  return Connect(once);
}

Status Subscriber::Session::Connect(bool once) {
  control_ = std::make_unique<ControlClient>(context_, broker(), transport());
  auto backoff = Millis(200);
  bool warned = false;
  const auto give_up = clock().Steady() + options_.once_connect_timeout;
  auto tried_since = clock().Steady();
  for (;;) {
    auto hello = Hello();
    if (hello.ok()) {
      Attach(*hello);
      OfferKeySet(*hello);
      MC_LOG(info) << "connected to broker " << hello->broker_id() << " at " << broker().ToString();
      FlushAcks();  // whatever a previous run could not deliver
      return Status::Ok();
    }
    if (once && clock().Steady() >= give_up) {
      return hello.status();
    }
    // Logged once; the retries go on quietly until it answers ("connected").
    if (!warned) {
      MC_LOG(warning) << "broker " << broker().ToString()
                      << " not answering: " << hello.status().ToString() << "; retrying";
      warned = true;
    } else {
      MC_LOG(debug) << "broker still not answering: " << hello.status().ToString();
    }
    // Several brokers: after failover_after without an answer, the next.
    if (broker_count() > 1 && clock().Steady() - tried_since >= options_.failover_after) {
      current_ = (current_ + 1) % broker_count();
      tried_since = clock().Steady();
      warned = false;
      MC_LOG(info) << "trying broker " << broker().ToString() << " instead";
    }
    // libzmq gives up a connection whose security handshake failed (a key
    // not yet on the broker's allow-list): the retry gets a fresh socket.
    control_ = std::make_unique<ControlClient>(context_, broker(), transport());
    const auto until = clock().Steady() + backoff;
    while (clock().Steady() < until) {
      if (ShouldStop()) return Status::Unavailable("stopped before the broker answered");
      std::this_thread::sleep_for(Millis(50));
    }
    backoff = std::min(backoff * 2, Millis(10000));
  }
}

void Subscriber::Session::Attach(const v1::HelloReply& hello) {
  ContentClientOptions content;
  content.stall_timeout = options_.stall_timeout;
  content.min_rate_bytes = options_.min_rate_bytes;
  content.min_rate_window = options_.min_rate_window;
  content.clock = options_.clock;
  content.credit = options_.fetch_credit;
  content.fsync_each_file = false;  // Applier::Stage syncs the staging filesystem once
  content.transport = transport();
  content_ = std::make_unique<ContentClient>(
      context_, broker().WithPort(static_cast<uint16_t>(hello.content_port())), options_.repo,
      content);
  events_ = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::sub);
  ConfigureSocket(*events_, broker(), static_cast<int64_t>(kMaxEnvelopeBytes) + 1024);
  SecureClientSocket(*events_, transport());
  events_->set(zmq::sockopt::rcvhwm, 10000);
  std::string topic = options_.repo;
  topic.push_back('\0');
  events_->set(zmq::sockopt::subscribe, topic);
  events_->connect(broker().WithPort(static_cast<uint16_t>(hello.events_port())).Endpoint());
  events_port_ = hello.events_port();
  content_port_ = hello.content_port();
}

Result<uint64_t> Subscriber::Session::Head() {
  MC_ASSIGN_OR_RETURN(v1::HelloReply hello, Hello());
  if (hello.events_port() != events_port_ || hello.content_port() != content_port_) {
    MC_LOG(info) << "broker moved its event/content ports to " << hello.events_port() << "/"
                 << hello.content_port() << "; reconnecting";
    Attach(hello);
  }
  OfferKeySet(hello);
  for (const auto& r : hello.repos()) {
    if (r.repo() == options_.repo) return r.serial();
  }
  return uint64_t{0};
}

void Subscriber::Session::FlushAcks() {
  if (clock().Steady() < next_ack_try_) return;
  auto pending = follower_->state().PendingAcks();
  if (!pending.ok()) return;
  for (const auto& [id, ack] : *pending) {
    Status sent = control_->SendAck(ack, Millis(2000));
    if (!sent.ok()) {
      // Retried with backoff; duplicates are harmless (the broker upserts).
      MC_LOG(debug) << "ACK not confirmed yet: " << sent.ToString() << "; retrying in "
                    << ack_backoff_.count() << " ms";
      next_ack_try_ = clock().Steady() + ack_backoff_;
      ack_backoff_ = std::min(ack_backoff_ * 2, Millis(30000));
      return;
    }
    if (Status dropped = follower_->state().DropAck(id); !dropped.ok()) {
      MC_LOG(warning) << "cannot drop a confirmed ACK: " << dropped.ToString();
    }
  }
  ack_backoff_ = Millis(1000);
}

void Subscriber::Session::OnBroadcast(const std::string& envelope, bool* need_sync) {
  v1::Envelope outer;
  if (!outer.ParseFromString(envelope)) {
    follower_->Reject(0, Status::Rejected("malformed envelope"));
    return;
  }
  const KeyTrust& trust = follower_->trust();
  if (trust.rooted()) {
    // A broadcast signed under a newer key set than this mirror's (by a key
    // it may not know yet): fetch the broker's key set before judging it.
    // The version is read unverified, so it only asks for a fetch, once per
    // version named.
    v1::SignedPayload peek;
    uint64_t named = 0;
    if (peek.ParseFromString(outer.payload())) {
      named = peek.has_repo_changed() ? peek.repo_changed().keyset_version()
                                      : peek.heartbeat().keyset_version();
    }
    if (named > trust.version() && named > highest_keyset_seen_) {
      highest_keyset_seen_ = named;
      MC_LOG(info) << "a broadcast names key set version " << named << ", this mirror has "
                   << trust.version() << ": fetching the broker's";
      *need_sync = true;
      poked_ = true;
      return;
    }
  }
  if (!trust.IsEventKey(outer.key_id()) && trust.IsHeartbeatKey(outer.key_id())) {
    // A heartbeat key may sign heartbeats and nothing else.
    auto opened = trust.OpenHeartbeat(envelope, clock().NowUnix());
    if (!opened.ok()) {
      follower_->Reject(0, opened.status());
      return;
    }
    const v1::Heartbeat& hb = opened->payload.heartbeat();
    // The same time checks as every event (no expiry, expired, from the
    // future), against one time for this heartbeat.
    if (Status checked = CheckHeartbeat(hb, clock().NowUnix()); !checked.ok()) {
      follower_->Reject(0, checked);
      return;
    }
    if (hb.issued_unix() < last_heartbeat_issued_) return;  // replayed or reordered
    for (const auto& r : hb.repos()) {
      if (r.repo() != options_.repo) continue;
      if (r.serial() < follower_->serial()) {
        // A head older than this mirror's: a broker replaying history or
        // restored from an old backup. It proves no freshness and moves
        // nothing.
        follower_->Reject(
            r.serial(),
            Status::Rejected("heartbeat says the head is serial " + std::to_string(r.serial()) +
                             ", older than this mirror's " + std::to_string(follower_->serial())));
        return;
      }
      if (r.serial() > follower_->serial()) {
        MC_LOG(info) << "heartbeat says serial " << r.serial() << ", this mirror has "
                     << follower_->serial() << ": catching up";
        NoteNewer(r.serial(), need_sync);
      }
    }
    last_heartbeat_issued_ = hb.issued_unix();
    CheckFreshness();
    if (options_.on_heartbeat) options_.on_heartbeat(envelope);
    return;
  }
  if (!trust.IsEventKey(outer.key_id()) && !trust.IsHeartbeatKey(outer.key_id())) {
    // Signed by a key this mirror does not trust. A heartbeat (read
    // unverified, only to tell it apart) is ignored without marking the
    // mirror rejected: the usual cause is a missing --heartbeat-trust.
    v1::SignedPayload peek;
    if (peek.ParseFromString(outer.payload()) && peek.has_heartbeat() && !peek.has_repo_changed()) {
      if (untrusted_heartbeat_keys_.size() < 16 &&
          untrusted_heartbeat_keys_.insert(outer.key_id()).second) {
        MC_LOG(warning) << "ignoring heartbeats signed by key " << EscapeForLog(outer.key_id(), 64)
                        << ", which this mirror does not trust; to track the origin's freshness "
                        << (trust.rooted() ? "the key set must name it as a heartbeat key"
                                           : "give the subscriber --heartbeat-trust with the "
                                             "public half of the broker's --heartbeat-key")
                        << " (logged once per key)";
      }
      return;
    }
  }
  auto event = follower_->Verify(envelope);
  if (!event.ok()) {
    follower_->Reject(0, event.status());
    return;
  }
  if (event->serial() > follower_->serial()) {
    NoteNewer(event->serial(), need_sync);
  } else if (Status forward = follower_->CheckForward(event->serial(), event->manifest_sha256());
             forward.code() == Status::Code::kRejected && event->serial() == follower_->serial()) {
    // The applied serial with another manifest: a fork of history.
    follower_->Reject(event->serial(), forward.WithContext("broadcast event"));
  }
  // An older broadcast is ignored: broadcasts race with catch-up (a mirror
  // that caught up from the log still drains the events it had queued), so
  // one is no sign of an attack; a catch-up or jump to it is refused.
}

void Subscriber::Session::CheckFreshness() {
  if (!follower_->trust().HasHeartbeatKeys()) return;
  const int64_t now = clock().NowUnix();
  const int64_t since = last_heartbeat_issued_ ? last_heartbeat_issued_ : started_unix_;
  const bool stale = now - since > options_.stale_after.count();
  if (stale == stale_) return;
  stale_ = stale;
  stale_out_ = stale;
  ApplyStats none;
  if (stale) {
    const std::string why = last_heartbeat_issued_
                                ? "no valid heartbeat for " + std::to_string(now - since) + " s"
                                : "no valid heartbeat since start";
    MC_LOG(warning) << "mirror is stale: " << why << " (limit " << options_.stale_after.count()
                    << " s); the origin may be frozen or unreachable";
    follower_->Ack(v1::ACK_STALE, follower_->serial(), none, 0.0, why);
  } else {
    MC_LOG(info) << "fresh again: valid heartbeat received";
    follower_->Ack(v1::ACK_APPLIED, follower_->serial(), none, 0.0, "");
  }
}

bool Subscriber::Session::SwitchTo(size_t i, const std::string& why) {
  auto control = std::make_unique<ControlClient>(context_, BrokerAt(i), TransportAt(i));
  auto hello = HelloOn(*control, kControlTimeout);
  if (!hello.ok()) {
    MC_LOG(debug) << "broker " << BrokerAt(i).ToString()
                  << " does not answer either: " << hello.status().ToString();
    return false;
  }
  const std::string was = broker().ToString();
  current_ = i;
  control_ = std::move(control);
  Attach(*hello);
  OfferKeySet(*hello);
  MC_LOG(warning) << "switched from broker " << was << " to " << broker().ToString() << " ("
                  << hello->broker_id() << "): " << why << "; the mirror is at serial "
                  << follower_->serial();
  broker_lost_ = false;
  refused_ = false;
  trouble_since_ = {};
  // The new broker learns where this mirror is.
  if (!stale_) {
    ApplyStats none;
    follower_->Ack(v1::ACK_APPLIED, follower_->serial(), none, 0.0, "");
  }
  return true;
}

void Subscriber::Session::MaybeFailOver(bool* need_sync) {
  if (broker_count() < 2) return;
  if (!broker_lost_ && !stale_ && !refused_) {
    trouble_since_ = {};
    return;
  }
  const auto now = clock().Steady();
  if (trouble_since_ == SteadyClock::time_point{}) {
    trouble_since_ = broker_lost_ ? lost_since_ : now;
  }
  if (now - trouble_since_ < options_.failover_after) return;
  const std::string why =
      broker_lost_ ? "unreachable for " +
                         std::to_string(
                             std::chrono::duration_cast<std::chrono::seconds>(now - trouble_since_)
                                 .count()) +
                         " s"
      : refused_ ? "offers what this mirror refuses (" + EscapeForLog(last_failure_, 200) + ")"
                 : std::string("stale (no valid heartbeat)");
  const bool was_refused = refused_;
  for (size_t k = 1; k < broker_count(); ++k) {
    const size_t from = current_;
    if (SwitchTo((current_ + k) % broker_count(), broker().ToString() + " " + why)) {
      // A broker that served what fails verification is not trusted back
      // soon: ten failover periods, at least ten minutes.
      if (was_refused && from == 0) {
        refused_back_after_ = now + std::max<std::chrono::seconds>(10 * options_.failover_after,
                                                                   std::chrono::minutes(10));
      }
      *need_sync = true;
      return;
    }
  }
  trouble_since_ = now;  // none answers: try them all again after another failover_after
}

void Subscriber::Session::MaybeGoBack(bool* need_sync) {
  if (clock().Steady() < refused_back_after_) return;
  ControlClient probe(context_, BrokerAt(0), TransportAt(0));
  auto hello = HelloOn(probe, Millis(1000));
  if (!hello.ok()) return;
  uint64_t head = 0;
  for (const auto& r : hello->repos()) {
    if (r.repo() == options_.repo) head = r.serial();
  }
  if (head < follower_->serial()) return;  // not caught up with what this mirror has
  if (SwitchTo(0, "the first broker answers again at serial " + std::to_string(head))) {
    *need_sync = true;
  }
}

void Subscriber::Session::MaybeReloadTrust() {
  const uint64_t wanted = reload_.wanted.load();
  if (reload_.done.load() >= wanted) return;
  auto next = ReloadKeyTrust(follower_->trust(), options_.trust, options_.heartbeat_trust,
                             options_.root_keys);
  Status result = next.status();
  if (next.ok()) {
    follower_->ReplaceTrust(std::move(*next));
    untrusted_heartbeat_keys_.clear();  // a key still untrusted is said again
    MC_LOG(info) << "trust reloaded: " << follower_->trust().Describe();
    CheckFreshness();
  } else {
    MC_LOG(error) << "trust reload failed, keeping the keys in force: "
                  << EscapeForLog(result.ToString(), 1024);
  }
  {
    std::lock_guard lock(reload_.mu);
    reload_.result = std::move(result);
  }
  reload_.done.store(wanted);
}

void Subscriber::Session::UpdateServiceStatus() {
  std::string line = "repo " + options_.repo + " at serial " + std::to_string(follower_->serial());
  if (highest_seen_ > follower_->serial())
    line += " (behind: " + std::to_string(highest_seen_) + ")";
  line += broker_lost_ ? "; broker " + broker().ToString() + " unreachable"
                       : "; following " + broker().ToString();
  if (stale_) line += "; stale";
  if (!last_failure_.empty()) line += "; last catch-up failed: " + EscapeForLog(last_failure_, 80);
  if (options_.notify_systemd) service_.SetStatus(line);
}

void Subscriber::Session::Serve() {
  auto next_sync = clock().Steady();  // catch up right away
  auto next_poll = clock().Steady() + options_.poll_interval;
  auto next_ack = clock().Steady() + Millis(1000);
  auto backoff = std::chrono::duration_cast<Millis>(options_.retry_min);
  bool need_sync = true;
  while (!ShouldStop()) {
    MaybeReloadTrust();
    UpdateServiceStatus();
    if (need_sync && clock().Steady() >= next_sync) {
      Status s = CatchUp();
      NoteBroker(s);
      if (s.ok()) {
        need_sync = false;
        if (!last_failure_.empty()) {
          // One line when it works again, after the one when it stopped.
          MC_LOG(info) << "catch-up works again: broker " << broker().ToString()
                       << " answers and the mirror is at serial " << follower_->serial();
        }
        last_failure_.clear();
        refused_ = false;
        backoff = std::chrono::duration_cast<Millis>(options_.retry_min);
      } else if (!ShouldStop()) {
        // The same failure again (a broker that keeps offering what this
        // mirror refuses) is logged once; the retries back off regardless.
        const std::string failure = s.ToString();
        if (Unreachable(s)) {
          // Said once by NoteBroker; the retries back off quietly.
          MC_LOG(debug) << "catch-up failed: " << EscapeForLog(failure, 1024);
        } else if (failure != last_failure_) {
          MC_LOG(warning) << "catch-up failed: " << EscapeForLog(failure, 1024) << "; retrying in "
                          << backoff.count() << " ms";
        } else {
          MC_LOG(debug) << "catch-up failed again; retrying in " << backoff.count() << " ms";
        }
        if (!Unreachable(s)) last_failure_ = failure;
        refused_ = s.code() == Status::Code::kRejected || s.code() == Status::Code::kCorruption;
        next_sync = clock().Steady() + backoff;
        backoff = std::min(backoff * 2, std::chrono::duration_cast<Millis>(options_.retry_max));
      }
    }
    zmq::pollitem_t item{static_cast<void*>(*events_), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, Millis(200));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) MC_LOG(error) << "poll: " << e.what();
      continue;
    }
    if (item.revents & ZMQ_POLLIN) {
      // Drain everything queued; only the newest serial matters, and the
      // catch-up fetches anything in between from the durable log.
      for (int i = 0; i < 10000; ++i) {
        auto frames = ReceiveMultipart(*events_);
        if (frames.empty()) break;
        if (frames.size() != 2) continue;
        OnBroadcast(frames[1].to_string(), &need_sync);
        if (poked_) {
          // News of a serial not seen before: retry now, whatever the backoff said.
          poked_ = false;
          next_sync = clock().Steady();
          backoff = std::chrono::duration_cast<Millis>(options_.retry_min);
        }
      }
    }
    const auto now = clock().Steady();
    if (now >= next_poll) {
      // A stale mirror asks more often: the broker may be back on new ports.
      next_poll = now + (stale_ ? std::min<std::chrono::seconds>(options_.poll_interval,
                                                                 std::chrono::seconds(5))
                                : options_.poll_interval);
      if (current_ != 0) MaybeGoBack(&need_sync);
      auto head = Head();
      NoteBroker(head.status());
      if (head.ok() && *head > follower_->serial()) need_sync = true;
      if (head.ok() && *head < follower_->serial()) {
        follower_->Reject(
            *head,
            Status::Rejected("broker's head is serial " + std::to_string(*head) +
                             ", older than this mirror's serial " +
                             std::to_string(follower_->serial()) + "; keeping the newer tree"));
      }
    }
    MaybeFailOver(&need_sync);
    if (now >= next_ack) {
      next_ack = now + Millis(1000);
      FlushAcks();
      CheckFreshness();
      follower_->SweepDeletions();
    }
  }
}

Subscriber::Subscriber(SubscriberOptions options) : options_(std::move(options)) {
  if (options_.id.empty()) options_.id = "mirror";
}

Subscriber::~Subscriber() { Stop(); }

Status Subscriber::Start() {
  stop_ = false;
  session_ = std::make_unique<Session>(options_, stop_, serial_, stale_out_, service_, reload_);
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

void Subscriber::Loop() {
  Status s = RunGuarded("subscriber", [this] {
    MC_RETURN_IF_ERROR(session_->Init().WithContext("cannot start"));
    session_->Serve();
    return Status::Ok();
  });
  // Serve() returns only when asked to stop; anything else is a failure
  // that ends the daemon (Run() returns 1), never a live-looking process
  // that follows nothing.
  if (!s.ok() && !stop_) {
    MC_LOG(error) << s.ToString();
    failed_ = true;
  }
  stop_ = true;
}

void Subscriber::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  session_.reset();
}

Status Subscriber::CheckConfig() const {
  if (auto trust = LoadKeyTrust(options_.trust, options_.heartbeat_trust, options_.root_keys);
      !trust.ok()) {
    return trust.status();
  }
  MC_RETURN_IF_ERROR(CheckUsableDirectory(options_.tree, "--tree"));
  MC_RETURN_IF_ERROR(CheckUsableDirectory(options_.state, "--state"));
  if (options_.staging) MC_RETURN_IF_ERROR(CheckUsableDirectory(*options_.staging, "--staging"));
  return Status::Ok();
}

Status Subscriber::ReloadTrust() {
  const uint64_t wanted = reload_.wanted.fetch_add(1) + 1;
  const auto deadline = SteadyClock::now() + std::chrono::seconds(30);
  while (reload_.done.load() < wanted) {
    // The loop takes it between turns; a long apply may hold it up.
    if (stop_.load() || SteadyClock::now() > deadline) {
      return Status::Timeout("the subscriber's loop did not take the trust reload in time");
    }
    std::this_thread::sleep_for(Millis(10));
  }
  std::lock_guard lock(reload_.mu);
  return reload_.result;
}

int Subscriber::Run() {
  if (Status config = CheckConfig(); !config.ok()) {
    MC_LOG(error) << "configuration error: " << EscapeForLog(config.ToString(), 1024);
    return 2;
  }
  if (Status started = Start(); !started.ok()) {
    MC_LOG(error) << "cannot start: " << started.ToString();
    return 1;
  }
  while (!StopRequested() && !stop_.load()) {
    if (ReloadRequested()) {
      service_.Reloading();
      (void)ReloadTrust();  // logged either way
      service_.Ready("reloaded");
    }
    service_.Tick();
    std::this_thread::sleep_for(Millis(100));
  }
  const bool failed = stop_.load() && !StopRequested();
  if (!failed) MC_LOG(info) << "stopping";
  service_.Stopping();
  Stop();
  return failed ? 1 : 0;
}

Result<SyncReport> Subscriber::SyncOnce() {
  stop_ = false;
  session_ = std::make_unique<Session>(options_, stop_, serial_, stale_out_, service_, reload_);
  MC_RETURN_IF_ERROR(session_->Init(/*once=*/true));
  const uint64_t before = serial_.load();
  Status s = session_->CatchUp();
  session_->FlushAcks();
  session_.reset();
  MC_RETURN_IF_ERROR(s);
  return SyncReport{serial_.load(), serial_.load() - before};
}

}  // namespace mirrorcast
