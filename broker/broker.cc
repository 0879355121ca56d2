#include "broker/broker.h"

#include <unistd.h>

#include <chrono>
#include <set>
#include <sstream>
#include <system_error>

#include "broker/status_page.h"
#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/base/thread_guard.h"
#include "core/cli/signals.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/fs/lock.h"
#include "core/fs/path.h"
#include "core/manifest/chunks.h"
#include "core/manifest/manifest.h"
#include "core/mirror/mirror_state.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

namespace {

const Clock& BrokerClock(const BrokerOptions& options) {
  return options.clock ? *options.clock : Clock::Real();
}

}  // namespace

namespace fs = std::filesystem;
using Millis = std::chrono::milliseconds;

// LinkedFile entries a PublishReply carries at most (about 60 bytes each).

namespace {

constexpr uint32_t kMaxEventsPerReply = 1000;
constexpr size_t kMaxMirrorIdBytes = 128;

v1::ControlReply Fail(const std::string& message) {
  v1::ControlReply reply;
  reply.set_ok(false);
  reply.set_error(message);
  return reply;
}

v1::ControlReply Ok() {
  v1::ControlReply reply;
  reply.set_ok(true);
  return reply;
}

std::string Hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "broker";
  return buf;
}

bool PrintableId(const std::string& id) {
  if (id.empty() || id.size() > kMaxMirrorIdBytes) return false;
  for (unsigned char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

namespace {
// Linked files in one control reply: at most this many, and paths of at
// most kLinkedPathBytesPerReply in all, well inside kMaxControlMessageBytes.
size_t LinkedPerReply(const BrokerOptions& options) {
  return std::clamp<size_t>(options.linked_per_reply, 1, 250000);
}
constexpr size_t kLinkedPathBytesPerReply = 16u << 20;
}  // namespace

Broker::Broker(BrokerOptions options)
    : options_(std::move(options)),
      context_(1),
      control_(context_, zmq::socket_type::router),
      events_(context_, zmq::socket_type::xpub) {
  if (options_.broker_id.empty()) options_.broker_id = Hostname();
  // A recall needs the manifest of every serial whose versions are kept.
  options_.keep_manifests = std::max(options_.keep_manifests, options_.keep_versions + 1);
}

Broker::~Broker() { Stop(); }

Status Broker::Start() {
  if (options_.curve_key.has_value() != options_.allow_file.has_value()) {
    return Status::InvalidArgument(
        "CURVE needs both the broker's secret key (--curve-key) and the allow-list (--allow)");
  }
  if (options_.curve_key) {
    auto keys = LoadCurveSecretFile(*options_.curve_key);
    if (!keys.ok()) return keys.status().WithContext("--curve-key");
    curve_ = std::move(*keys);
    auto list = AllowList::LoadFile(*options_.allow_file);
    if (!list.ok()) return list.status().WithContext("--allow");
    allow_ = std::make_unique<CurrentAllowList>(std::make_shared<const AllowList>(std::move(*list)),
                                                *options_.allow_file);
  } else if (!options_.insecure_plaintext) {
    return Status::InvalidArgument(
        "no transport security: pass --curve-key FILE and --allow FILE (make keys with "
        "'mirrorcast keygen --curve'), or --insecure-plaintext for a lab");
  }
  MC_ASSIGN_OR_RETURN(trust_, LoadKeyTrust(options_.trust, {}, options_.root_keys));
  const bool relay = !options_.upstream.empty();
  if (relay && options_.heartbeat_key) {
    return Status::InvalidArgument(
        "--heartbeat-key signs the origin's heartbeats; a relay (--upstream) passes those down "
        "unchanged: give it --heartbeat-trust with the origin's public heartbeat key instead");
  }
  if (relay && options_.upstream_transport.size() != options_.upstream.size()) {
    return Status::InvalidArgument("one transport per --upstream is needed");
  }
  if (options_.heartbeat_key) {
    auto key = SigningKey::LoadFile(*options_.heartbeat_key);
    if (!key.ok()) return key.status().WithContext("heartbeat key");
    heartbeat_key_ = std::move(*key);
  } else if (relay && options_.heartbeat_trust.empty()) {
    MC_LOG(warning) << "relay without --heartbeat-trust: the origin's heartbeats are not passed "
                       "down, so this region's mirrors cannot prove they are fresh";
  } else if (!relay) {
    MC_LOG(warning) << "no --heartbeat-key: mirrors cannot prove they are fresh";
  }
  std::error_code ec;
  if (!fs::is_directory(options_.tree_root, ec)) {
    return Status::NotFound("tree root " + options_.tree_root.string() + " is not a directory");
  }
  MC_ASSIGN_OR_RETURN(state_, BrokerState::Open(options_.state_dir));
  if (trust_.rooted()) {
    // The current key set, as last accepted (written atomically, fsync'd).
    const fs::path keyset = options_.state_dir / "keyset";
    if (fs::exists(keyset, ec)) {
      MC_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(keyset, kMaxKeySetBytes));
      MC_RETURN_IF_ERROR(trust_.AdoptStored(bytes).WithContext(keyset.string()));
    } else {
      MC_LOG(warning) << "no key set yet: publishes are refused until 'mirrorcast keys publish' "
                         "uploads one signed by the root key";
    }
  }
  MC_ASSIGN_OR_RETURN(recall_versions_, ServableVersionReader::Open(options_.state_dir));
  objects_ = std::make_unique<ObjectStore>(options_.state_dir / "objects");
  // Objects linked for a publish that never committed (a crash in between).
  MC_ASSIGN_OR_RETURN(auto uncommitted, state_->UncommittedObjects());
  for (const auto& [repo, sha] : uncommitted) {
    if (Status s = objects_->Remove(repo, sha); !s.ok()) MC_LOG(warning) << s.ToString();
  }
  MC_RETURN_IF_ERROR(state_->ClearPendingObjects(""));
  MC_RETURN_IF_ERROR(state_->ClearStagedVersions(""));

  if (curve_) {
    // Before any server socket binds: no handshake ever finds no handler.
    zap_ = std::make_unique<ZapHandler>(context_, *allow_);
    MC_RETURN_IF_ERROR(zap_->Start());
  }
  ConfigureSocket(control_, options_.listen, static_cast<int64_t>(kMaxControlMessageBytes));
  const bool enforced = SecureServerSocket(control_, curve_, kZapDomainControl);
  SecureServerSocket(events_, curve_, kZapDomainEvents);
  control_.set(zmq::sockopt::router_mandatory, 0);  // replies to vanished peers are dropped
  // Per peer: what ZeroMQ holds of one peer while this thread is busy (a
  // publish). Clients send one request at a time.
  control_.set(zmq::sockopt::rcvhwm, 16);
  ConfigureSocket(events_, options_.listen, static_cast<int64_t>(4096));
  events_.set(zmq::sockopt::sndhwm, 10000);
  events_.set(zmq::sockopt::xpub_nodrop, 0);  // a slow subscriber loses messages, never us
  // Every subscription, repeated ones too: a returning mirror is re-notified.
  events_.set(zmq::sockopt::xpub_verbose, 1);
  try {
    control_.bind(options_.listen.Endpoint());
  } catch (const zmq::error_t& e) {
    return Status::Unavailable("bind " + options_.listen.ToString() + ": " + e.what());
  }
  MC_ASSIGN_OR_RETURN(control_port_, BoundPort(control_));

  auto side_port = [&](uint16_t configured, int offset) -> uint16_t {
    if (configured != 0) return configured;
    if (options_.listen.port == 0) return 0;
    return static_cast<uint16_t>(options_.listen.port + offset);
  };
  const HostPort events_addr = options_.listen.WithPort(side_port(options_.events_port, 1));
  try {
    events_.bind(events_addr.Endpoint());
  } catch (const zmq::error_t& e) {
    return Status::Unavailable("bind events socket " + events_addr.ToString() + ": " + e.what());
  }
  MC_ASSIGN_OR_RETURN(events_port_, BoundPort(events_));

  ContentServerOptions content;
  content.bind = options_.listen.WithPort(side_port(options_.content_port, 2));
  content.tree_root = options_.tree_root;
  content.state_dir = options_.state_dir;
  content.objects = objects_.get();
  content.keep_versions = options_.keep_versions;
  content.objects_dir = options_.state_dir / "manifest-objects";
  content.scratch_dir = options_.state_dir / "scratch";
  content.workers = options_.content_workers;
  content.limits = options_.content_limits;
  content.before_job = options_.content_before_job;
  content.curve = curve_;
  content.allow = allow_.get();
  content.clock = options_.clock;
  content_ = std::make_unique<ContentServer>(context_, content);
  MC_RETURN_IF_ERROR(content_->Start());
  content_port_ = content_->port();

  if (options_.http) {
    // The first snapshot before the page serves (the control thread is not
    // running yet, so the state is this thread's here).
    RefreshSnapshot(true);
    http_ = std::make_unique<StatusHttpServer>(*options_.http, [this] {
      std::lock_guard<std::mutex> lock(snapshot_mu_);
      return snapshot_;
    });
    MC_RETURN_IF_ERROR(http_->Start());
    if (options_.http_port_file) {
      MC_RETURN_IF_ERROR(WriteFileAtomic(*options_.http_port_file,
                                         options_.http->WithPort(http_->port()).ToString() + "\n")
                             .WithContext("http port file"));
    }
  }

  if (relay) {
    RelayOptions r;
    r.upstream = options_.upstream;
    r.transport = options_.upstream_transport;
    r.tree_root = options_.tree_root;
    r.state_root = options_.state_dir / "relay";
    r.trust = options_.trust;
    r.root_keys = options_.root_keys;
    r.heartbeat_trust = options_.heartbeat_trust;
    r.id = options_.broker_id;
    r.poll_interval = options_.upstream_poll;
    r.failover_after = options_.upstream_failover_after;
    r.stale_after = options_.upstream_stale_after;
    r.after_signature = options_.relay_after_signature;
    r.clock = options_.clock;
    relay_ = std::make_unique<Relay>(std::move(r));
    MC_RETURN_IF_ERROR(relay_->Start());
    // Every recorded ACK goes upstream once more: what a crash kept from
    // being forwarded is not lost.
    if (auto rows = state_->Mirrors(); rows.ok()) {
      for (const v1::MirrorStatus& m : *rows) MarkForward(m.mirror_id(), m.repo());
    }
  }

  stop_ = false;
  control_failed_ = false;
  control_thread_ = std::thread([this] { ControlThread(); });

  MC_LOG(info) << "serving control=" << options_.listen.WithPort(control_port_).ToString()
               << " events=" << events_port_ << " content=" << content_port_
               << " tree_root=" << options_.tree_root.string()
               << " repos=" << state_->repos().size() << " trust=" << trust_.Describe()
               << (relay_ ? " mode=" + relay_->Describe() : std::string(" mode=origin"));
  if (curve_) {
    const auto list = allow_->Get();
    MC_LOG(info) << "transport CURVE, broker key " << curve_->public_z85 << ", allow-list "
                 << options_.allow_file->string() << ": " << list->size() << " keys (publish "
                 << list->CountRole(PeerRole::kPublish) << ", mirror "
                 << list->CountRole(PeerRole::kMirror) << ", relay "
                 << list->CountRole(PeerRole::kRelay) << ", admin "
                 << list->CountRole(PeerRole::kAdmin) << ")"
                 << (enforced ? ", ZAP domain enforced"
                              : "; this libzmq has no ZMQ_ZAP_ENFORCE_DOMAIN (draft API): the "
                                "ZAP handler stays bound while any socket is");
  } else {
    MC_LOG(warning) << "INSECURE: --insecure-plaintext: every socket is plain TCP without "
                       "authentication; anyone who reaches these ports can subscribe, fetch, "
                       "ACK as any mirror and read the status. For a lab only; use "
                       "--curve-key and --allow";
  }
  if (options_.port_file) {
    MC_RETURN_IF_ERROR(WriteFileAtomic(*options_.port_file,
                                       options_.listen.WithPort(control_port_).ToString() + "\n")
                           .WithContext("port file"));
  }
  return Status::Ok();
}

void Broker::Stop() {
  if (http_) http_->Stop();
  // The followers first: an apply in progress stops at its next check.
  if (relay_) relay_->Stop();
  if (control_thread_.joinable()) {
    stop_ = true;
    control_thread_.join();
  }
  // Polls noted since the last flush (the control thread has ended).
  if (state_ && !seen_pending_.empty()) FlushSeen();
  if (content_) content_->Stop();
  control_.close();
  events_.close();
  // Last: the server sockets that asked it are closed.
  if (zap_) zap_->Stop();
}

Status Broker::ReloadAllowList() {
  if (!allow_) return Status::FailedPrecondition("no allow-list: the broker runs without CURVE");
  auto list = AllowList::LoadFile(*options_.allow_file);
  if (!list.ok()) {
    MC_LOG(error) << "allow-list reload failed, keeping the previous list: "
                  << EscapeForLog(list.status().ToString(), 1024);
    return list.status();
  }
  const size_t keys = list->size();
  allow_->Replace(std::make_shared<const AllowList>(std::move(*list)));
  MC_LOG(info) << "allow-list reloaded from " << options_.allow_file->string() << ": " << keys
               << " keys; removed keys are refused from their next handshake or request";
  return Status::Ok();
}

Status Broker::CheckConfig() const {
  if (options_.curve_key) {
    if (auto keys = LoadCurveSecretFile(*options_.curve_key); !keys.ok()) {
      return keys.status().WithContext("--curve-key");
    }
    if (!options_.allow_file) return Status::InvalidArgument("--curve-key needs --allow FILE");
    if (auto list = AllowList::LoadFile(*options_.allow_file); !list.ok()) {
      return list.status().WithContext("--allow");
    }
  } else if (!options_.insecure_plaintext) {
    return Status::InvalidArgument(
        "no transport security: pass --curve-key FILE and --allow FILE (make keys with "
        "'mirrorcast keygen --curve'), or --insecure-plaintext for a lab");
  }
  if (auto trust = LoadKeyTrust(options_.trust, {}, options_.root_keys); !trust.ok()) {
    return trust.status();
  }
  if (options_.heartbeat_key) {
    if (!options_.upstream.empty()) {
      return Status::InvalidArgument(
          "--heartbeat-key signs the origin's heartbeats; a relay (--upstream) passes those "
          "down: give it --heartbeat-trust with the origin's public heartbeat key instead");
    }
    if (auto key = SigningKey::LoadFile(*options_.heartbeat_key); !key.ok()) {
      return key.status().WithContext("--heartbeat-key");
    }
  }
  if (!options_.heartbeat_trust.empty()) {
    if (auto trust = LoadKeyTrust(options_.trust, options_.heartbeat_trust, options_.root_keys);
        !trust.ok()) {
      return trust.status().WithContext("--heartbeat-trust");
    }
  }
  std::error_code ec;
  if (!fs::is_directory(options_.tree_root, ec)) {
    return Status::NotFound("--tree-root " + options_.tree_root.string() + " is not a directory");
  }
  return CheckUsableDirectory(options_.state_dir, "--state");
}

Status Broker::ReloadTrust() {
  const uint64_t wanted = trust_reload_wanted_.fetch_add(1) + 1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (trust_reload_done_.load() < wanted) {
    if (stop_ || failed() || std::chrono::steady_clock::now() > deadline) {
      return Status::Timeout("the control thread did not take the trust reload in time");
    }
    std::this_thread::sleep_for(Millis(10));
  }
  std::lock_guard lock(trust_reload_mu_);
  return trust_reload_result_;
}

void Broker::UpdateServiceStatus() {
  const auto now = std::chrono::steady_clock::now();
  if (now - service_status_at_ < std::chrono::seconds(5)) return;
  service_status_at_ = now;
  std::ostringstream line;
  const auto& repos = state_->repos();
  line << repos.size() << (repos.size() == 1 ? " repo" : " repos");
  size_t shown = 0;
  for (const auto& [repo, head] : repos) {
    if (shown++ == 3) {
      line << ", ...";
      break;
    }
    line << (shown == 1 ? " (" : ", ") << repo << " at serial " << head.serial;
  }
  if (!repos.empty()) line << ")";
  auto mirrors = state_->Mirrors();
  if (mirrors.ok()) {
    size_t failing = 0;
    for (const auto& m : *mirrors) {
      if (m.state() == v1::ACK_FAILED || m.state() == v1::ACK_REJECTED) ++failing;
    }
    line << "; " << mirrors->size() << " mirrors, " << failing << " failed or rejecting";
  }
  std::lock_guard lock(service_status_mu_);
  service_status_ = line.str();
}

int Broker::Run() {
  if (Status config = CheckConfig(); !config.ok()) {
    MC_LOG(error) << "configuration error: " << EscapeForLog(config.ToString(), 1024);
    return 2;
  }
  Status started = Start();
  if (!started.ok()) {
    MC_LOG(error) << "cannot start: " << started.ToString();
    Stop();
    return 1;
  }
  service_.Ready("serving on " + options_.listen.ToString());
  while (!StopRequested() && !failed()) {
    if (ReloadRequested()) {
      service_.Reloading();
      if (allow_) (void)ReloadAllowList();  // logged either way
      (void)ReloadTrust();                  // logged either way
      if (relay_) relay_->ReloadTrust();    // the followers' too
      service_.Ready("reloaded");
    }
    {
      std::lock_guard lock(service_status_mu_);
      if (!service_status_.empty()) service_.SetStatus(service_status_);
    }
    service_.Tick();
    std::this_thread::sleep_for(Millis(100));
  }
  const bool failed_now = failed();
  MC_LOG(info) << (failed_now ? "stopping after a failure" : "stopping");
  service_.Stopping();
  Stop();
  return failed_now ? 1 : 0;
}

bool Broker::failed() const {
  return control_failed_ || (content_ && content_->failed()) || (zap_ && zap_->failed());
}

void Broker::ControlThread() {
  Status s = RunGuarded("control", [this] { return ControlLoop(); });
  if (!s.ok()) {
    MC_LOG(fatal) << "control loop ended: " << s.ToString();
    control_failed_ = true;
  }
}

void Broker::SendHeartbeat() {
  if (!heartbeat_key_ || state_->repos().empty()) return;
  const int64_t now = BrokerClock(options_).NowUnix();
  v1::SignedPayload payload;
  auto* hb = payload.mutable_heartbeat();
  hb->set_origin(options_.broker_id);
  hb->set_issued_unix(now);
  // Valid for a few intervals, so one lost heartbeat does not make anyone stale.
  hb->set_expires_unix(now + std::max<int64_t>(30, 3 * options_.heartbeat_interval.count()));
  hb->set_keyset_version(trust_.version());
  for (const auto& [repo, head] : state_->repos()) {
    auto* r = hb->add_repos();
    r->set_repo(repo);
    r->set_serial(head.serial);
    r->set_manifest_sha256(head.manifest_sha256);
  }
  const std::string envelope = SealEnvelope(std::move(payload), *heartbeat_key_);
  for (const auto& [repo, head] : state_->repos()) {
    (void)head;
    FanOut(repo, envelope);
  }
}

Status Broker::ControlLoop() {
  auto next_heartbeat = BrokerClock(options_).Steady();
  while (!stop_) {
    service_.Progress();
    if (const uint64_t wanted = trust_reload_wanted_.load(); trust_reload_done_.load() < wanted) {
      auto next = ReloadKeyTrust(trust_, options_.trust, {}, options_.root_keys);
      Status result = next.status();
      if (next.ok()) {
        trust_ = std::move(*next);
        MC_LOG(info) << "trust reloaded: " << trust_.Describe();
      } else {
        MC_LOG(error) << "trust reload failed, keeping the keys in force: "
                      << EscapeForLog(result.ToString(), 1024);
      }
      {
        std::lock_guard lock(trust_reload_mu_);
        trust_reload_result_ = std::move(result);
      }
      trust_reload_done_.store(wanted);
    }
    UpdateServiceStatus();
    if (relay_) RelayTurn();
    RenotifyOwed();
    if (BrokerClock(options_).Steady() >= next_heartbeat) {
      SendHeartbeat();
      next_heartbeat = BrokerClock(options_).Steady() + options_.heartbeat_interval;
    }
    zmq::pollitem_t items[] = {{static_cast<void*>(control_), 0, ZMQ_POLLIN, 0},
                               {static_cast<void*>(events_), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, control_pending_ > 0 ? Millis(0) : Millis(200));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return Status::Internal(std::string("control poll failed: ") + e.what());
    }
    if (items[0].revents & ZMQ_POLLIN) {
      for (int i = 0; i < 1000; ++i) {
        auto frames = ReceiveMultipart(control_);
        if (frames.empty()) break;
        AdmitControl(frames);
      }
    }
    // A bounded round, then back to the sockets: a request that arrives
    // meanwhile joins the rotation behind at most one request per peer.
    ServeControl(64);
    if (http_) {
      RefreshSnapshot(false);
    } else if (!seen_pending_.empty() &&
               std::chrono::steady_clock::now() - seen_flushed_ >= std::chrono::seconds(5)) {
      FlushSeen();
    }
    if (items[1].revents & ZMQ_POLLIN) {
      // Subscription changes; logged for operators.
      for (int i = 0; i < 1000; ++i) {
        auto frames = ReceiveMultipart(events_);
        if (frames.empty()) break;
        const std::string sub = frames[0].to_string();
        if (!sub.empty()) {
          const std::string topic = sub.substr(1, sub.find('\0', 1) - 1);
          MC_LOG(debug) << (sub[0] == 1 ? "subscribe " : "unsubscribe ") << EscapeForLog(topic);
          if (sub[0] == 1) NoteSubscription(topic);
        }
      }
    }
  }
  return Status::Ok();
}

namespace {

// Each request type of ControlRequest's body: its name for refusals and
// logs, and what it is to the role checks.
struct ControlKind {
  uint32_t field;
  const char* name;
  ControlAction action;
};
constexpr ControlKind kControlKinds[] = {
    {v1::ControlRequest::kHello, "Hello", ControlAction::kHello},
    {v1::ControlRequest::kPublish, "Publish", ControlAction::kPublish},
    {v1::ControlRequest::kEvents, "Events", ControlAction::kEvents},
    {v1::ControlRequest::kAck, "Ack", ControlAction::kAck},
    {v1::ControlRequest::kStatus, "Status", ControlAction::kStatus},
    {v1::ControlRequest::kPutObjects, "PutObjects", ControlAction::kPutObjects},
    {v1::ControlRequest::kLinked, "Linked", ControlAction::kLinked},
    // A key set is checked against the broker's root before it is stored;
    // who may upload it is a publisher's role.
    {v1::ControlRequest::kPublishKeySet, "PublishKeySet", ControlAction::kPublish},
    {v1::ControlRequest::kRelayAcks, "RelayAcks", ControlAction::kRelayAcks},
};

// nullptr for a field that is no request type (a peer's choice).
const ControlKind* ControlKindOf(uint32_t field) {
  for (const ControlKind& kind : kControlKinds) {
    if (kind.field == field) return &kind;
  }
  return nullptr;
}

const char* ControlRequestName(uint32_t field) {
  const ControlKind* kind = ControlKindOf(field);
  return kind ? kind->name : "unknown";
}

}  // namespace

void Broker::SendControlRefusal(zmq::message_t& identity, uint64_t request_id,
                                const std::string& peer, const std::string& limit,
                                const std::string& message) {
  const auto now = BrokerClock(options_).Steady();
  if (control_limits_logged_.size() > 4096) control_limits_logged_.clear();  // bounded
  auto [it, fresh] = control_limits_logged_.emplace(peer + '\0' + limit, now);
  if (fresh || now - it->second >= std::chrono::minutes(1)) {
    it->second = now;
    MC_LOG(warning) << "control peer " << PeerForLog(peer) << " refused: " << limit
                    << " (logged once a minute)";
  }
  v1::ControlReply reply = Fail(message);
  reply.set_protocol_version(kProtocolVersion);
  reply.set_request_id(request_id);
  std::vector<zmq::message_t> out;
  out.push_back(std::move(identity));
  out.push_back(ToFrame(reply));
  SendMultipartNoWait(control_, out);
}

void Broker::LogOnce(const std::string& key, const std::string& line) {
  if (logged_once_.count(key) != 0) return;
  if (logged_once_.size() >= 4096) return;  // bounded; the first 4096 are in the log
  logged_once_.insert(key);
  MC_LOG(warning) << line;
}

bool Broker::AdmitRole(std::vector<zmq::message_t>& frames, const std::string& peer,
                       uint32_t body_field, uint64_t request_id) {
  auto send_refusal = [&](const std::string& message) {
    v1::ControlReply reply = Fail(message);
    reply.set_protocol_version(kProtocolVersion);
    reply.set_request_id(request_id);
    std::vector<zmq::message_t> out;
    out.push_back(std::move(frames[0]));
    out.push_back(ToFrame(reply));
    SendMultipartNoWait(control_, out);
  };
  const auto user_id = UserIdOf(frames.back());
  const auto caller = user_id ? allow_->Check(*user_id) : std::nullopt;
  if (!caller) {
    // Passed ZAP at its handshake, removed from the list since (SIGHUP).
    LogOnce("gone\n" + peer, "refused control requests of " + PeerForLog(peer) +
                                 ": its key is no longer on the allow-list (logged once per key)");
    send_refusal("refused: this client's key is not on the broker's allow-list");
    return false;
  }
  const ControlKind* kind = ControlKindOf(body_field);
  if (kind == nullptr || !RoleMayControl(caller->role, kind->action)) {
    const std::string what = ControlRequestName(body_field);
    LogOnce("role\n" + peer + "\n" + what,
            "refused a " + what + " request of " + std::string(RoleName(caller->role)) + " key " +
                caller->name + " (" + caller->public_z85 + "): its role may not send it (logged " +
                "once per key and request type)");
    send_refusal("refused: the " + std::string(RoleName(caller->role)) + " key " + caller->name +
                 " may not send " + what + " requests");
    return false;
  }
  return true;
}

void Broker::AdmitControl(std::vector<zmq::message_t>& frames) {
  if (frames.size() != 2) return;  // not a DEALER speaking our protocol
  const ControlLimits& limits = options_.control_limits;
  const std::string peer = PeerOf(frames);
  auto peek = PeekRequest(frames[1]);
  if (!peek.ok()) {
    SendControlRefusal(frames[0], 0, peer, "malformed request", peek.status().message());
    return;
  }
  // Every length-delimited field of a ControlRequest is its oneof body:
  // one, or a small body could hide behind a large one.
  if (peek->length_delimited_fields > 1) {
    SendControlRefusal(frames[0], peek->request_id, peer, "malformed request",
                       "refused: a control request carries one body");
    return;
  }
  // The size cap of its type, before the frame costs a parse.
  const uint32_t type = peek->body_field;
  const bool large = type == v1::ControlRequest::kPublish ||
                     type == v1::ControlRequest::kPutObjects ||
                     type == v1::ControlRequest::kRelayAcks;
  const size_t cap = large ? kMaxControlMessageBytes : limits.small_request_bytes;
  if (frames[1].size() > cap) {
    SendControlRefusal(frames[0], peek->request_id, peer,
                       std::string("oversized ") + ControlRequestName(type) + " request",
                       std::string("refused: a ") + ControlRequestName(type) + " request of " +
                           std::to_string(frames[1].size()) + " bytes exceeds its cap of " +
                           std::to_string(cap));
    return;
  }
  const auto now = BrokerClock(options_).Steady();
  auto [it, fresh] = control_peers_.try_emplace(peer);
  ControlPeer& p = it->second;
  if (fresh) {
    p.tokens = limits.burst;
    p.refilled = now;
  }
  const double seconds = std::chrono::duration<double>(now - p.refilled).count();
  p.tokens = std::min(limits.burst, p.tokens + seconds * limits.requests_per_second);
  p.refilled = now;
  auto forget_if_idle = [&] {
    if (p.pending.empty() && !p.ready && p.tokens >= limits.burst) control_peers_.erase(it);
  };
  if (p.tokens < 1) {
    SendControlRefusal(frames[0], peek->request_id, peer, "request rate",
                       "refused: more than " + std::to_string(static_cast<int>(limits.burst)) +
                           " control requests at once or " +
                           std::to_string(static_cast<int>(limits.requests_per_second)) +
                           " a second from this peer; retry later");
    return;
  }
  if (curve_ && !AdmitRole(frames, peer, peek->body_field, peek->request_id)) {
    p.tokens -= 1;  // refused requests spend the budget too: no flood of them
    return;
  }
  if (p.pending.size() >= limits.pending_per_peer || control_pending_ >= limits.pending ||
      control_pending_bytes_ + frames[1].size() > limits.pending_bytes) {
    SendControlRefusal(frames[0], peek->request_id, peer, "requests waiting",
                       "refused: too many control requests waiting; retry later");
    forget_if_idle();
    return;
  }
  p.tokens -= 1;
  control_pending_bytes_ += frames[1].size();
  p.pending.push_back(std::move(frames));
  ++control_pending_;
  if (!p.ready) {
    p.ready = true;
    control_ready_.push_back(peer);
  }
}

void Broker::ServeControl(size_t max) {
  for (size_t served = 0; served < max && !control_ready_.empty(); ++served) {
    std::string peer = std::move(control_ready_.front());
    control_ready_.pop_front();
    auto it = control_peers_.find(peer);
    if (it == control_peers_.end() || it->second.pending.empty()) continue;
    std::vector<zmq::message_t> frames = std::move(it->second.pending.front());
    it->second.pending.pop_front();
    --control_pending_;
    control_pending_bytes_ -= std::min(control_pending_bytes_, frames[1].size());
    if (it->second.pending.empty()) {
      it->second.ready = false;
    } else {
      control_ready_.push_back(peer);
    }
    HandleControl(frames);
  }
  // Peers whose bucket refilled and who wait for nothing are forgotten.
  if (control_peers_.size() > 1024) {
    const auto now = BrokerClock(options_).Steady();
    const ControlLimits& limits = options_.control_limits;
    for (auto it = control_peers_.begin(); it != control_peers_.end();) {
      const double seconds = std::chrono::duration<double>(now - it->second.refilled).count();
      const bool full = it->second.tokens + seconds * limits.requests_per_second >= limits.burst;
      it = (!it->second.ready && it->second.pending.empty() && full) ? control_peers_.erase(it)
                                                                     : std::next(it);
    }
  }
}

void Broker::HandleControl(std::vector<zmq::message_t>& frames) {
  if (frames.size() != 2) return;  // not a DEALER speaking our protocol
  v1::ControlRequest request;
  v1::ControlReply reply;
  Status parsed = ParseFrame(frames[1], kMaxControlMessageBytes, &request);
  if (!parsed.ok()) {
    MC_LOG(warning) << "bad control request: " << EscapeForLog(parsed.ToString());
    reply = Fail(parsed.message());
  } else if (request.protocol_version() != kProtocolVersion) {
    reply = Fail("unsupported protocol version " + std::to_string(request.protocol_version()));
  } else {
    std::optional<PeerIdentity> caller;
    if (curve_) {
      // AdmitRole checked it a moment ago; read again, not trusted across.
      const auto user_id = UserIdOf(frames.back());
      caller = user_id ? allow_->Check(*user_id) : std::nullopt;
    }
    reply = curve_ && !caller ? Fail("refused: this client's key is not on the broker's allow-list")
                              : Dispatch(request, caller);
  }
  reply.set_protocol_version(kProtocolVersion);
  reply.set_request_id(request.request_id());
  std::vector<zmq::message_t> out;
  out.push_back(std::move(frames[0]));
  out.push_back(ToFrame(reply));
  SendMultipartNoWait(control_, out);
}

v1::ControlReply Broker::Dispatch(const v1::ControlRequest& request,
                                  const std::optional<PeerIdentity>& caller) {
  switch (request.body_case()) {
    case v1::ControlRequest::kHello:
      return HandleHello(request.hello(), caller);
    case v1::ControlRequest::kPublish:
      return HandlePublish(request.publish());
    case v1::ControlRequest::kEvents:
      return HandleEvents(request.events());
    case v1::ControlRequest::kAck:
      return HandleAck(request.ack(), caller);
    case v1::ControlRequest::kStatus:
      return HandleStatus();
    case v1::ControlRequest::kLinked:
      return HandleLinked(request.linked());
    case v1::ControlRequest::kPutObjects:
      return HandlePutObjects(request.put_objects());
    case v1::ControlRequest::kPublishKeySet:
      return HandlePublishKeySet(request.publish_key_set());
    case v1::ControlRequest::kRelayAcks:
      return HandleRelayAcks(request.relay_acks(), caller);
    default:
      return Fail("empty control request");
  }
}

v1::ControlReply Broker::HandleHello(const v1::HelloRequest& request,
                                     const std::optional<PeerIdentity>& caller) {
  MC_LOG(debug) << "hello from " << EscapeForLog(request.client());
  NoteSeen(request, caller);
  v1::ControlReply reply = Ok();
  auto* hello = reply.mutable_hello();
  hello->set_events_port(events_port_);
  hello->set_content_port(content_port_);
  hello->set_broker_id(options_.broker_id);
  for (const auto& [repo, head] : state_->repos()) {
    auto* r = hello->add_repos();
    r->set_repo(repo);
    r->set_serial(head.serial);
    r->set_manifest_sha256(head.manifest_sha256);
    *hello->add_recall_windows() = RecallWindowOf(repo, head);
  }
  if (const KeySet* set = trust_.current()) {
    hello->set_keyset_version(set->version());
    hello->set_key_set(set->bytes());
  }
  return reply;
}

v1::ControlReply Broker::HandlePublishKeySet(const v1::PublishKeySetRequest& request) {
  if (relay_) return Fail(RelayRefusal("key set upload"));
  return AdoptKeySet(request.key_set());
}

v1::ControlReply Broker::AdoptKeySet(const std::string& bytes) {
  auto set = trust_.Check(bytes, BrokerClock(options_).NowUnix());
  if (!set.ok() && set.status().code() != Status::Code::kAlreadyExists) {
    MC_LOG(warning) << "refused key set: " << EscapeForLog(set.status().ToString(), 1024);
    return Fail("refused: " + set.status().message());
  }
  v1::ControlReply reply = Ok();
  if (!set.ok()) {  // the current one again
    reply.mutable_publish_key_set()->set_version(trust_.version());
    return reply;
  }
  // Durable before anyone is told of it.
  if (Status s = WriteFileAtomic(options_.state_dir / "keyset", set->bytes()); !s.ok()) {
    MC_LOG(error) << "cannot store key set version " << set->version() << ": " << s.ToString();
    return Fail("broker cannot store the key set: " + s.message());
  }
  const uint64_t was = trust_.version();
  for (const auto& reset : set->body().resets()) {
    const RepoHead head = state_->Head(reset.repo());
    MC_LOG(warning) << "key set version " << set->version() << " resets repo "
                    << EscapeForLog(reset.repo(), 64) << " to serial " << reset.floor()
                    << " on mirrors that accepted a later serial under a key set older than "
                    << reset.since_version() << " (this broker's head: serial " << head.serial
                    << "; its next publish is serial " << head.serial + 1 << ")";
  }
  trust_.Adopt(std::move(*set));
  MC_LOG(info) << "accepted key set version " << trust_.version() << " (was " << was << ")";
  DropRevokedEvents();
  reply.mutable_publish_key_set()->set_version(trust_.version());
  SendHeartbeat();  // carries the new version: mirrors fetch it now
  return reply;
}

void Broker::DropRevokedEvents() {
  const int64_t now = BrokerClock(options_).NowUnix();
  for (const auto& [repo, head] : state_->repos()) {
    std::vector<uint64_t> revoked;
    uint64_t since = 0;
    for (;;) {
      auto page = state_->EventsSince(repo, since, 256);
      if (!page.ok()) {
        MC_LOG(error) << "event log of " << repo << ": " << page.status().ToString();
        break;
      }
      const uint64_t page_start = since;
      for (const auto& bytes : page->envelopes) {
        // Our own log: parsed for its serial, then judged as a mirror will.
        v1::Envelope envelope;
        v1::SignedPayload payload;
        if (!envelope.ParseFromString(bytes) || !payload.ParseFromString(envelope.payload()) ||
            payload.repo_changed().serial() <= since) {
          continue;
        }
        since = payload.repo_changed().serial();
        if (!trust_.OpenEvent(bytes, now).ok()) revoked.push_back(since);
      }
      if (page->envelopes.size() < 256 || since == page_start) break;
    }
    if (revoked.empty()) continue;
    if (Status s = state_->DropEvents(repo, revoked); !s.ok()) {
      MC_LOG(error) << "cannot drop revoked events of " << repo << ": " << s.ToString();
      continue;
    }
    MC_LOG(warning) << "dropped " << revoked.size() << " event(s) of " << repo
                    << " from the log: their signing keys are not in key set version "
                    << trust_.version() << " (mirrors behind them jump to the head)";
  }
}

v1::ControlReply Broker::HandlePublish(const v1::PublishRequest& request) {
  if (relay_) return Fail(RelayRefusal("publish"));
  const int64_t now = BrokerClock(options_).NowUnix();
  const auto t0 = BrokerClock(options_).Steady();
  auto opened = trust_.OpenEvent(request.envelope(), now);
  if (!opened.ok()) {
    MC_LOG(warning) << "refused publish: " << EscapeForLog(opened.status().ToString(), 1024);
    return Fail("refused: " + opened.status().message());
  }
  const v1::RepoChanged& event = opened->payload.repo_changed();
  if (Status s = CheckRepoChanged(event, now); !s.ok()) {
    MC_LOG(warning) << "refused publish: " << EscapeForLog(s.ToString(), 1024);
    return Fail("refused: " + s.message());
  }
  const std::string& repo = event.repo();
  const RepoHead head = state_->Head(repo);
  if (event.previous_serial() != head.serial || event.serial() != head.serial + 1) {
    return Fail("serial conflict: broker has " + repo + " at serial " +
                std::to_string(head.serial) + ", event is " + std::to_string(event.serial()) +
                " after " + std::to_string(event.previous_serial()) +
                " (another publish happened first? re-run the publisher)");
  }
  const bool recall = event.recall_of() != 0;
  if (recall) {
    if (Status s = CheckRecall(event, head); !s.ok()) {
      MC_LOG(warning) << "refused recall of " << repo << " to serial " << event.recall_of() << ": "
                      << s.ToString();
      return Fail("refused: " + s.message());
    }
  }
  // The new manifest must be exactly the signed root, derived from (or, for
  // an omitted change list, diffed against) the previous one, or every
  // mirror's check would fail. Fails closed: without the previous manifest
  // nothing can be checked.
  ManifestStore& objects = state_->objects();
  ManifestIndex previous;
  if (head.serial > 0) {
    auto bytes = objects.Load(head.manifest_sha256, kMaxIndexBytes);
    auto decoded =
        bytes.ok() ? ManifestIndex::Decode(*bytes) : Result<ManifestIndex>(bytes.status());
    if (!decoded.ok()) {
      MC_LOG(error) << "stored manifest of " << repo << " serial " << head.serial
                    << " is unusable: " << decoded.status().ToString();
      return Fail("broker cannot check the change list: its stored manifest of serial " +
                  std::to_string(head.serial) + " is missing or damaged");
    }
    previous = std::move(*decoded);
  }
  ManifestIndex next_index;
  MemoryChunks fresh(&objects);  // chunks derived here, not yet stored
  if (!event.changes_omitted()) {
    auto derived = ApplyChangesToIndex(previous, fresh, event.changes(),
                                       [&](const ChunkRef& ref, std::string bytes) {
                                         fresh.Put(ref.id, std::move(bytes));
                                         return Status::Ok();
                                       });
    if (!derived.ok() && (derived.status().code() == Status::Code::kCorruption ||
                          derived.status().code() == Status::Code::kNotFound)) {
      MC_LOG(error) << "stored manifest of " << repo << " serial " << head.serial
                    << " is unusable: " << derived.status().ToString();
      return Fail("broker cannot check the change list: its stored manifest of serial " +
                  std::to_string(head.serial) + " is missing or damaged");
    }
    if (!derived.ok() || derived->Root() != event.manifest_sha256()) {
      return Fail("refused: the change list does not turn serial " + std::to_string(head.serial) +
                  " into the signed manifest" +
                  (derived.ok() ? "" : " (" + derived.status().message() + ")"));
    }
    next_index = std::move(*derived);
  } else {
    // Uploaded beforehand (PutObjects): the index under the signed root, and
    // every chunk the previous manifest lacks; the diff below reads each.
    auto bytes = objects.Load(event.manifest_sha256(), kMaxIndexBytes);
    if (!bytes.ok()) {
      return Fail("refused: the change list is left out but the manifest index " +
                  ToHex(event.manifest_sha256()).substr(0, 16) + " was not uploaded (" +
                  bytes.status().message() + ")");
    }
    auto decoded = ManifestIndex::Decode(*bytes);
    if (!decoded.ok()) return Fail("refused: manifest index: " + decoded.status().message());
    next_index = std::move(*decoded);
  }
  if (next_index.entries() != event.manifest_entries()) {
    return Fail("refused: the manifest has " + std::to_string(next_index.entries()) +
                " entries, the event says " + std::to_string(event.manifest_entries()));
  }
  NewHead in{repo,   event,  opened->key_id,    request.envelope(),     head, previous, next_index,
             &fresh, recall, /*relayed=*/false, event.changes_omitted()};
  return RecordEvent(in, t0);
}

v1::ControlReply Broker::RecordEvent(const NewHead& in, std::chrono::steady_clock::time_point t0) {
  const std::string& repo = in.repo;
  const v1::RepoChanged& event = in.event;
  const RepoHead& head = in.head;
  const ManifestIndex& previous = in.previous;
  const ManifestIndex& next_index = in.next_index;
  MemoryChunks& fresh = *in.fresh;
  ManifestStore& objects = state_->objects();
  const bool recall = in.recall;
  const int64_t now = BrokerClock(options_).NowUnix();
  auto since = [this, &t0] {
    return std::chrono::duration<double>(BrokerClock(options_).Steady() - t0).count();
  };

  // Which file versions this serial names anew (to check, record and
  // retain), and which (path, version) pairs it stops naming: the diff of
  // the two manifests, read from the chunks that differ only (every file of
  // the manifest for a repo's first publish).
  const double t_manifest = since();
  // A repo's first publish names every file of the tree: the new files are
  // checked and retained in batches as the diff finds them, and the version
  // rows of every full batch go to the state's staging tables, so memory
  // stays bounded whatever the size of the change.
  v1::ControlReply reply = Ok();
  VersionChanges versions;  // not yet staged
  uint64_t published_count = 0, retained_count = 0;
  bool staged = false;
  const size_t record_batch = std::max<size_t>(options_.record_batch_files, 1);
  const size_t stage_rows = std::max<size_t>(options_.stage_version_rows, 1);
  RecordTally tally;
  std::vector<v1::FileEntry> new_files;  // the batch not yet recorded
  Status recorded = Status::Ok();        // why recording stopped the diff
  auto record = [&]() -> Status {
    if (!new_files.empty()) {
      const size_t objects_before = versions.objects.size();
      // A recall names versions the broker keeps, not the tree's current
      // files; a relay's follower has already put them in the tree.
      recorded = recall && !in.relayed
                     ? RecordRecalledFiles(repo, event.recall_of(), new_files, &versions)
                     : RecordFiles(repo, new_files, &versions,
                                   reply.mutable_publish()->mutable_linked(), &tally);
      if (!recorded.ok()) return recorded;
      published_count += new_files.size();
      retained_count += versions.objects.size() - objects_before;
      new_files.clear();
    }
    if (versions.published.size() + versions.retired.size() + versions.linked.size() >=
        stage_rows) {
      recorded = state_->StageVersions(repo, event.serial(), versions).WithContext("broker state");
      if (!recorded.ok()) return recorded;
      staged = true;
      versions = VersionChanges();
    }
    return Status::Ok();
  };
  auto undo = [&] {
    // What this publish linked (recorded as pending first) and staged.
    if (auto uncommitted = state_->UncommittedObjects(repo); uncommitted.ok()) {
      for (const auto& [r, sha] : *uncommitted) (void)objects_->Remove(r, sha);
    }
    (void)state_->ClearPendingObjects(repo);
    if (staged) (void)state_->ClearStagedVersions(repo);
  };
  uint64_t counted = 0;
  Status diffed = DiffIndexEntries(
      previous, objects, next_index, fresh,
      [&](const v1::FileEntry* before, const v1::FileEntry* after) {
        if (++counted % 4096 == 0) service_.Progress();  // a long publish is progress too
        if (before != nullptr && before->kind() == v1::ENTRY_FILE) {
          versions.retired.emplace_back(before->path(), before->sha256());
        }
        if (after != nullptr && after->kind() == v1::ENTRY_FILE) new_files.push_back(*after);
        if (new_files.size() >= record_batch || versions.retired.size() >= stage_rows) {
          return record();
        }
        return Status::Ok();
      });
  if (diffed.ok()) diffed = record();
  if (!recorded.ok()) {
    undo();
    MC_LOG(warning) << "refused publish of " << repo << " serial " << event.serial() << ": "
                    << recorded.message();
    return Fail("refused: " + recorded.message());
  }
  if (!diffed.ok()) {
    undo();
    return Fail("refused: the new manifest: " + diffed.message());
  }
  if (tally.refused_links > 0) {
    MC_LOG(warning) << "repo=" << repo << ": " << tally.refused_links
                    << " new versions could not be retained (first: " << tally.first_refusal
                    << "); they are served from the tree only while it holds them";
  }
  // A relay that jumped (a bootstrap, a log that did not reach back) diffs
  // against its own older head: the count is the upstream's, from another
  // serial.
  if (event.previous_serial() == head.serial && counted != event.change_count()) {
    undo();
    return Fail("refused: the manifest differs from serial " + std::to_string(head.serial) +
                " by " + std::to_string(counted) + " changes, the event counts " +
                std::to_string(event.change_count()));
  }
  const double t_files = since();
  // The derived chunks and index, then one syncfs for all of them.
  std::vector<std::string> manifest_objects;
  Status stored = Status::Ok();
  for (const auto& [id, bytes] : fresh.chunks()) {
    if (stored.ok()) stored = objects.Put(bytes).status();
  }
  if (stored.ok() && !in.uploaded) stored = objects.Put(next_index.Encode()).status();
  // Uploaded objects (an omitted change list) may predate a restart.
  if (stored.ok()) stored = objects.Sync(/*everything=*/in.uploaded);
  for (const auto& r : next_index.refs) manifest_objects.push_back(r.id);
  manifest_objects.push_back(event.manifest_sha256());
  if (stored.ok()) stored = state_->TouchObjects(repo, event.serial(), manifest_objects);
  if (!stored.ok()) {
    MC_LOG(error) << "cannot store the manifest: " << stored.ToString();
    undo();
    return Fail("broker could not store the manifest: " + stored.message());
  }
  const double t_store = since();
  RepoHead next{event.serial(), event.manifest_sha256(), event.manifest_entries()};
  v1::RecallRecord recalled;
  if (recall) {
    recalled.set_repo(repo);
    recalled.set_serial(event.serial());
    recalled.set_recall_of(event.recall_of());
    recalled.set_reason(event.recall_reason());
    recalled.set_published_unix(event.published_unix());
    recalled.set_key_id(in.key_id);
  }
  if (Status s =
          state_->CommitEvent(repo, next, in.envelope, now, versions, recall ? &recalled : nullptr);
      !s.ok()) {
    MC_LOG(error) << "cannot commit event: " << s.ToString();
    undo();
    return Fail("broker could not store the event: " + s.message());
  }
  MC_LOG(info) << (in.relayed ? "relayed repo=" : "published repo=") << repo
               << " serial=" << event.serial() << " changes=" << event.change_count()
               << (event.changes_omitted() ? " (list left out)" : "")
               << " entries=" << event.manifest_entries() << " new_versions=" << published_count
               << " retained=" << retained_count << " key=" << in.key_id << " seconds=" << since()
               << " (manifest " << t_manifest << ", diff and files " << t_files - t_manifest
               << ", store " << t_store - t_files << ", commit " << since() - t_store << ")";
  if (recall) {
    MC_LOG(warning) << "recall: repo=" << repo << " serial=" << event.serial()
                    << " is a recall of serial " << event.recall_of() << " ("
                    << event.change_count() << " changes back from serial " << head.serial
                    << ", key=" << in.key_id << "): " << EscapeForLog(event.recall_reason(), 256);
  }
  FanOut(repo, in.envelope);
  if (auto owed = owed_.find(repo); owed != owed_.end()) {
    owed->second.backoff = Millis(1000);
    owed->second.next = BrokerClock(options_).Steady() + owed->second.backoff;
  }
  if (Status s =
          state_->RecordPublished(repo, event.serial(), BrokerClock(options_).NowUnixMillis());
      !s.ok()) {
    MC_LOG(warning) << "cannot record the publish time for the propagation view: " << s.ToString();
  }
  snapshot_stale_ = true;
  if (Status s = state_->Prune(repo, options_.keep_events, options_.keep_manifests); !s.ok()) {
    MC_LOG(warning) << "prune " << repo << ": " << s.ToString();
  }
  PruneVersions(repo);
  reply.mutable_publish()->set_serial(event.serial());
  reply.mutable_publish()->set_linked_more(tally.linked_more);
  return reply;
}

std::string Broker::RelayRefusal(const std::string& what) const {
  return "refused: this broker is a " + relay_->Describe() + "; it takes no " + what +
         " (publish to the origin)";
}

void Broker::RelayTurn() {
  for (auto& [repo, envelope] : relay_->TakeHeartbeats()) FanOut(repo, envelope);
  ForwardAcks();
  const auto now = BrokerClock(options_).Steady();
  for (const auto& [repo, serial] : relay_->Applied()) {
    if (serial <= state_->Head(repo).serial) continue;
    RelayRetry& retry = relay_retry_[repo];
    if (retry.serial == serial && now < retry.next) continue;
    Status s = RecordRelayed(repo);
    if (s.ok()) {
      relay_retry_.erase(repo);
      continue;
    }
    // Said once per serial; retried every few seconds (a read that raced the
    // follower's next commit simply records that one instead).
    if (retry.serial != serial) {
      MC_LOG(error) << "relay: cannot re-publish " << repo << " serial " << serial << ": "
                    << EscapeForLog(s.ToString(), 1024)
                    << " (its mirrors stay at the previous serial; retrying)";
    }
    retry.serial = serial;
    retry.next = now + std::chrono::seconds(5);
  }
}

Status Broker::RecordRelayed(const std::string& repo) {
  const auto t0 = BrokerClock(options_).Steady();
  const int64_t now = BrokerClock(options_).NowUnix();
  MC_ASSIGN_OR_RETURN(auto applied, AppliedHead::Read(relay_->StateOf(repo), repo));
  const RepoHead head = state_->Head(repo);
  if (applied->serial() <= head.serial) return Status::Ok();
  if (applied->envelope().empty()) {
    return Status::FailedPrecondition(
        "the follower holds serial " + std::to_string(applied->serial()) +
        " without its signed event (a state from before relays): the next serial is relayed");
  }
  // The follower's key set (rooted trust): the broker's own check, as for
  // an upload, before the events it signs can be opened.
  if (trust_.rooted() && !applied->key_set().empty()) {
    v1::ControlReply adopted = AdoptKeySet(applied->key_set());
    if (!adopted.ok()) return Status::Rejected("key set: " + adopted.error());
  }
  // The same checks as a publish: the origin's signature with this broker's
  // own trust, the event's times, the serial order; never re-signed.
  auto opened = trust_.OpenEvent(applied->envelope(), now);
  if (!opened.ok()) return opened.status().WithContext("the applied event");
  const v1::RepoChanged& event = opened->payload.repo_changed();
  MC_RETURN_IF_ERROR(CheckRepoChanged(event, now).WithContext("the applied event"));
  if (event.repo() != repo || event.serial() != applied->serial() ||
      event.manifest_sha256() != applied->digest()) {
    return Status::Corruption("the follower's state records serial " +
                              std::to_string(applied->serial()) + " with an event of " +
                              EscapeForLog(event.repo(), 64) + " serial " +
                              std::to_string(event.serial()) + " or another manifest");
  }
  if (event.serial() <= head.serial) return Status::Ok();
  ManifestStore& objects = state_->objects();
  ManifestIndex previous;
  if (head.serial > 0) {
    MC_ASSIGN_OR_RETURN(std::string bytes, objects.Load(head.manifest_sha256, kMaxIndexBytes));
    MC_ASSIGN_OR_RETURN(previous, ManifestIndex::Decode(bytes));
  }
  // The manifest the follower applied (its root checked against the signed
  // one there and here): the chunks this store lacks, each checked against
  // its id, then the index.
  const ManifestIndex& next_index = applied->index();
  if (next_index.Root() != event.manifest_sha256()) {
    return Status::Corruption("the follower's manifest index does not match the signed root");
  }
  for (const ChunkRef& ref : next_index.refs) {
    if (objects.Has(ref.id)) continue;
    MC_ASSIGN_OR_RETURN(std::string bytes, applied->LoadChunk(ref.id));
    MC_ASSIGN_OR_RETURN(std::string id, objects.Put(bytes));
    if (id != ref.id) {
      (void)objects.Remove(id);
      return Status::Corruption("manifest chunk " + ToHex(ref.id).substr(0, 16) +
                                " in the follower's state does not match its id");
    }
  }
  MC_RETURN_IF_ERROR(objects.Put(next_index.Encode()).status());
  if (next_index.entries() != event.manifest_entries()) {
    return Status::Corruption("the manifest has " + std::to_string(next_index.entries()) +
                              " entries, the event says " +
                              std::to_string(event.manifest_entries()));
  }
  MemoryChunks fresh(&objects);  // everything is in the store already
  NewHead in{repo,
             event,
             opened->key_id,
             applied->envelope(),
             head,
             previous,
             next_index,
             &fresh,
             event.recall_of() != 0,
             /*relayed=*/true,
             /*uploaded=*/false};
  v1::ControlReply reply = RecordEvent(in, t0);
  if (!reply.ok()) return Status::Rejected(reply.error());
  return Status::Ok();
}

v1::ControlReply Broker::HandleLinked(const v1::LinkedRequest& request) {
  if (Status s = ValidateRepoName(request.repo()); !s.ok()) return Fail(s.message());
  if (request.after_path().size() > kMaxPathBytes) return Fail("refused: after_path is too long");
  bool more = false;
  auto page = state_->LinkedPage(request.repo(), request.serial(), request.after_path(),
                                 LinkedPerReply(options_), kLinkedPathBytesPerReply, &more);
  if (!page.ok()) {
    MC_LOG(warning) << "linked files of " << request.repo() << ": " << page.status().ToString();
    return Fail("broker could not read the linked files: " + page.status().message());
  }
  v1::ControlReply reply = Ok();
  v1::LinkedReply* out = reply.mutable_linked();
  for (v1::LinkedFile& f : *page) *out->add_linked() = std::move(f);
  out->set_more(more);
  return reply;
}

Status Broker::RecordFiles(const std::string& repo, const std::vector<v1::FileEntry>& files,
                           VersionChanges* versions,
                           google::protobuf::RepeatedPtrField<v1::LinkedFile>* linked,
                           RecordTally* tally) {
  const bool retain = options_.keep_versions > 0;
  if (retain) {
    std::vector<std::string> shas;
    shas.reserve(files.size());
    for (const v1::FileEntry& e : files) shas.push_back(e.sha256());
    MC_RETURN_IF_ERROR(state_->AddPendingObjects(repo, shas).WithContext("broker state"));
  }
  std::set<std::string> retained;  // versions already seen in this publish
  TreeDirCache dirs;               // files come in path order: siblings share a walk
  for (const v1::FileEntry& e : files) {
    const v1::FileEntry* entry = &e;
    auto shown = [entry] { return EscapeForLog(entry->path()); };  // for refusals only
    // The same open and stat serve the check, the identity and the link.
    auto file = OpenInTree(options_.tree_root, repo, entry->path(), &dirs);
    if (!file.ok()) {
      return Status::Rejected(shown() +
                              " is not in the tree as signed: " + file.status().message());
    }
    const FileIdentity identity = IdentityOf(file->st);
    if (identity.size != entry->size()) {
      return Status::Rejected(shown() + " has " + std::to_string(identity.size) +
                              " bytes in the tree, the signed size is " +
                              std::to_string(entry->size()));
    }
    if (static_cast<int64_t>(file->st.st_mtim.tv_sec) != entry->mtime()) {
      return Status::Rejected(shown() + " changed after the publisher scanned it (mtime " +
                              std::to_string(file->st.st_mtim.tv_sec) + " in the tree, " +
                              std::to_string(entry->mtime()) + " signed); re-run the publisher");
    }
    PublishedVersion version{entry->sha256(), entry->path(), identity};
    if (retain && retained.insert(entry->sha256()).second) {
      // A retained object still holding the bytes it was made from is kept.
      MC_ASSIGN_OR_RETURN(auto existing, state_->ObjectOf(repo, entry->sha256()));
      bool keep_existing = false;
      if (existing) {
        auto object = OpenStateFile(objects_->PathOf(repo, entry->sha256()));
        keep_existing = object.ok() && SameContent(existing->identity, IdentityOf(object->st));
      }
      if (!keep_existing) {
        std::string why_not;
        auto made = objects_->Retain(repo, entry->sha256(), *file, &why_not);
        if (!made.ok()) return made.status();
        if (*made) {
          versions->objects.push_back(StoredObject{entry->sha256(), **made});
          if ((*made)->kind == ObjectKind::kLink) {
            version.identity = (*made)->identity;  // the link moved the tree file's ctime
          }
          // The reply must fit one control message: past the cap the links
          // are kept for the publisher to page through.
          if ((*made)->kind == ObjectKind::kLink) {
            v1::LinkedFile* l = nullptr;
            if (!tally->linked_more &&
                static_cast<size_t>(linked->size()) < LinkedPerReply(options_) &&
                tally->linked_path_bytes + entry->path().size() <= kLinkedPathBytesPerReply) {
              tally->linked_path_bytes += entry->path().size();
              l = linked->Add();
            } else {
              l = &versions->linked.emplace_back();
              tally->linked_more = true;
            }
            l->set_path(entry->path());
            l->set_inode(identity.ino);
            l->set_size(identity.size);
            l->set_mtime_ns(identity.mtime_ns);
            l->set_ctime_before_ns(identity.ctime_ns);
            l->set_ctime_after_ns((*made)->identity.ctime_ns);
          }
        } else if (!why_not.empty()) {
          if (tally->refused_links++ == 0) tally->first_refusal = why_not;
        }
      }
    }
    versions->published.push_back(std::move(version));
  }
  return Status::Ok();
}

v1::RecallWindow Broker::RecallWindowOf(const std::string& repo, const RepoHead& head) {
  v1::RecallWindow window;
  window.set_repo(repo);
  window.set_keep_versions(options_.keep_versions);
  // A version serial N names and the head does not was retired at some
  // serial after N; it stays servable while retired + keep_versions > head,
  // so N >= head - keep_versions. The manifests (keep_manifests is at least
  // keep_versions + 1) and the event log must reach back that far too.
  if (head.serial >= 2 && options_.keep_versions > 0) {
    uint64_t oldest =
        head.serial > options_.keep_versions ? head.serial - options_.keep_versions : 1;
    auto logged = state_->OldestEventSerial(repo);
    if (!logged.ok()) {
      MC_LOG(warning) << "recall window of " << repo << ": " << logged.status().ToString();
    } else if (*logged != 0) {
      oldest = std::max(oldest, *logged);
      if (oldest < head.serial) {
        window.set_oldest(oldest);
        window.set_newest(head.serial - 1);
      }
    }
  }
  auto recalled = state_->RecallAt(repo, head.serial);
  if (!recalled.ok()) {
    MC_LOG(warning) << "recalls of " << repo << ": " << recalled.status().ToString();
  } else if (*recalled) {
    *window.mutable_head_recall() = std::move(**recalled);
  }
  return window;
}

Status Broker::CheckRecall(const v1::RepoChanged& event, const RepoHead& head) {
  const std::string& repo = event.repo();
  const uint64_t target = event.recall_of();
  const v1::RecallWindow window = RecallWindowOf(repo, head);
  if (target < window.oldest() || target > window.newest() || window.oldest() == 0) {
    std::string kept = "the broker keeps replaced versions for " +
                       std::to_string(options_.keep_versions) + " serials (--keep-versions)";
    return Status::Rejected(
        "serial " + std::to_string(target) + " is outside the recall window of " + repo + ": " +
        (window.oldest() == 0
             ? std::string("no serial can be recalled at serial ") + std::to_string(head.serial)
             : "serials " + std::to_string(window.oldest()) + " to " +
                   std::to_string(window.newest()) + " can be recalled") +
        " (" + kept + ")");
  }
  auto stored = state_->StoredEvent(repo, target);
  if (!stored.ok()) {
    MC_LOG(error) << "cannot read event " << target << " of " << repo << ": "
                  << stored.status().ToString();
    return Status::Unavailable("the broker cannot read its event of serial " +
                               std::to_string(target));
  }
  if (!*stored) {
    return Status::Rejected("serial " + std::to_string(target) + " of " + repo +
                            " is no longer in the event log");
  }
  if ((*stored)->manifest_sha256() != event.manifest_sha256() ||
      (*stored)->manifest_entries() != event.manifest_entries()) {
    return Status::Rejected(
        "the recall does not carry serial " + std::to_string(target) + "'s manifest (root " +
        ToHex((*stored)->manifest_sha256()).substr(0, 16) + ", the recall names " +
        ToHex(event.manifest_sha256()).substr(0, 16) + ")");
  }
  return Status::Ok();
}

Status Broker::RecordRecalledFiles(const std::string& repo, uint64_t recall_of,
                                   const std::vector<v1::FileEntry>& files,
                                   VersionChanges* versions) {
  for (const v1::FileEntry& e : files) {
    // The same lookup and checks a content worker makes before serving it.
    auto found = recall_versions_->Find(repo, e.sha256(), e.path(), options_.keep_versions);
    if (!found.ok()) return found.status().WithContext("the version table");
    auto open = content_->OpenPublished(*recall_versions_, repo, e.sha256(), e.path());
    if (!open.ok()) {
      return Status::Rejected("cannot recall serial " + std::to_string(recall_of) + ": " +
                              open.status().message());
    }
    if (open->identity.size != e.size()) {
      return Status::Rejected("cannot recall serial " + std::to_string(recall_of) + ": " +
                              EscapeForLog(e.path()) + " has " +
                              std::to_string(open->identity.size) + " bytes, the signed size is " +
                              std::to_string(e.size()));
    }
    // Current again at its path: its row there (retired by the bad push)
    // comes back as it was; at a new path it names what was opened.
    PublishedVersion version{e.sha256(), e.path(), open->identity};
    for (const PublishedVersion& at : found->paths) {
      if (at.path == e.path()) version.identity = at.identity;
    }
    versions->published.push_back(std::move(version));
  }
  return Status::Ok();
}

void Broker::PruneVersions(const std::string& repo) {
  auto expired = state_->ExpiredObjects(repo, options_.keep_versions);
  if (!expired.ok()) {
    MC_LOG(warning) << "prune versions of " << repo << ": " << expired.status().ToString();
    return;
  }
  // Files first, rows after: a crash in between leaves rows without files
  // (served from the tree or refused), never files nobody will remove.
  for (const std::string& sha : *expired) {
    if (Status s = objects_->Remove(repo, sha); !s.ok()) {
      MC_LOG(warning) << "prune versions of " << repo << ": " << s.ToString();
    }
  }
  if (Status s = state_->PruneVersions(repo, options_.keep_versions); !s.ok()) {
    MC_LOG(warning) << "prune versions of " << repo << ": " << s.ToString();
  } else if (!expired->empty()) {
    MC_LOG(info) << "pruned " << expired->size() << " retained versions of " << repo;
  }
}

void Broker::NoteSubscription(const std::string& repo) {
  if (owing_repos_.count(repo)) owed_[repo].subscribed = true;
}

void Broker::Renotify(const std::string& repo, Owed& owed, const char* why) {
  const RepoHead head = state_->Head(repo);
  if (head.serial == 0) return;
  auto events = state_->EventsSince(repo, head.serial - 1, 1);
  if (!events.ok() || events->envelopes.empty()) return;
  MC_LOG(debug) << "owed list: re-notifying " << repo << " serial " << head.serial << " (" << why
                << ")";
  FanOut(repo, events->envelopes.back());
  owed.last = BrokerClock(options_).Steady();
}

void Broker::RenotifyOwed() {
  const auto now = BrokerClock(options_).Steady();
  if (now - owed_checked_ >= std::chrono::seconds(1)) {
    // Which repos have a mirror whose last ACK is below the head.
    owed_checked_ = now;
    auto mirrors = state_->Mirrors();
    if (mirrors.ok()) {
      std::set<std::string> owing;
      for (const v1::MirrorStatus& m : *mirrors) {
        if (m.serial() < state_->Head(m.repo()).serial) owing.insert(m.repo());
      }
      for (auto it = owed_.begin(); it != owed_.end();) {
        it = owing.count(it->first) ? std::next(it) : owed_.erase(it);
      }
      for (const std::string& repo : owing) {
        if (owed_.try_emplace(repo).second) owed_[repo].next = now + std::chrono::seconds(1);
      }
      owing_repos_ = std::move(owing);
    }
  }
  for (auto& [repo, owed] : owed_) {
    // A subscription at once (at most every 200 ms per repo); otherwise the
    // backoff.
    if (owed.subscribed && now - owed.last >= Millis(200)) {
      owed.subscribed = false;
      Renotify(repo, owed, "a mirror subscribed");
    } else if (now >= owed.next) {
      Renotify(repo, owed, "mirrors behind");
      owed.backoff =
          std::min<std::chrono::milliseconds>(owed.backoff * 2, std::chrono::seconds(60));
      owed.next = now + owed.backoff;
    }
  }
}

void Broker::FanOut(const std::string& repo, const std::string& envelope) {
  std::vector<zmq::message_t> frames;
  std::string topic = repo;
  topic.push_back('\0');
  frames.emplace_back(topic.data(), topic.size());
  frames.emplace_back(envelope.data(), envelope.size());
  if (!SendMultipartNoWait(events_, frames)) {
    MC_LOG(warning) << "event fan-out of " << repo << " dropped (high-water mark)";
  }
}

v1::ControlReply Broker::HandlePutObjects(const v1::PutObjectsRequest& request) {
  if (relay_) return Fail(RelayRefusal("upload"));
  if (Status s = ValidateRepoName(request.repo()); !s.ok()) return Fail(s.message());
  size_t total = 0;
  for (const auto& object : request.objects()) total += object.size();
  if (total > kMaxPutObjectsBytes) {
    return Fail("refused: " + std::to_string(total) + " bytes of manifest objects exceed the " +
                std::to_string(kMaxPutObjectsBytes) + "-byte limit per request");
  }
  // Stored under their own SHA-256, so nothing uploaded can pose as anything
  // else; they count only once a signed event names them. Kept for the
  // next serial's keep window if none does.
  std::vector<std::string> ids;
  uint32_t stored = 0;
  for (const auto& object : request.objects()) {
    bool added = false;
    auto id = state_->objects().Put(object, &added);
    if (!id.ok()) {
      MC_LOG(error) << "cannot store a manifest object: " << id.status().ToString();
      return Fail("broker could not store the manifest objects: " + id.status().message());
    }
    stored += added ? 1 : 0;
    ids.push_back(std::move(*id));
  }
  if (Status s = state_->TouchObjects(request.repo(), state_->Head(request.repo()).serial + 1, ids);
      !s.ok()) {
    return Fail("broker could not record the manifest objects: " + s.message());
  }
  v1::ControlReply reply = Ok();
  reply.mutable_put_objects()->set_stored(stored);
  return reply;
}

v1::ControlReply Broker::HandleEvents(const v1::EventsRequest& request) {
  if (Status s = ValidateRepoName(request.repo()); !s.ok()) return Fail(s.message());
  const uint32_t max = std::clamp<uint32_t>(request.max_events(), 1, kMaxEventsPerReply);
  auto stored = state_->EventsSince(request.repo(), request.since_serial(), max);
  if (!stored.ok()) return Fail("event log: " + stored.status().message());
  v1::ControlReply reply = Ok();
  auto* events = reply.mutable_events();
  // A reply stays well inside a client's message limit; the client asks
  // again from where it got to.
  size_t bytes = 0;
  for (auto& e : stored->envelopes) {
    if (events->envelopes_size() > 0 && bytes + e.size() > kMaxControlMessageBytes / 2) break;
    bytes += e.size();
    events->add_envelopes(std::move(e));
  }
  events->set_latest_serial(state_->Head(request.repo()).serial);
  events->set_oldest_serial(stored->oldest_serial);
  events->set_gap(stored->oldest_serial > request.since_serial() + 1);
  return reply;
}

v1::ControlReply Broker::HandleAck(const v1::AckRequest& request,
                                   const std::optional<PeerIdentity>& caller) {
  const v1::Ack& ack = request.ack();
  if (!PrintableId(ack.mirror_id())) return Fail("bad mirror id");
  // A mirror reports, and shows in the status, only as the name its key is
  // listed under.
  if (caller && ack.mirror_id() != caller->name) {
    LogOnce("ack\n" + caller->public_z85 + "\n" + ack.mirror_id(),
            "refused ACK as mirror " + EscapeForLog(ack.mirror_id(), kMaxMirrorIdBytes) + " from " +
                std::string(RoleName(caller->role)) + " key " + caller->name + " (" +
                caller->public_z85 + "): that key is listed as " + caller->name +
                " (logged once per key and id)");
    return Fail("refused: this key may ACK only as mirror " + caller->name);
  }
  if (std::string why = AckRefusal(ack); !why.empty()) {
    MC_LOG(warning) << "refused ACK from mirror=" << EscapeForLog(ack.mirror_id())
                    << " repo=" << EscapeForLog(ack.repo(), 64) << ": " << why;
    return Fail("refused: " + why);
  }
  // Before the row moves: the serials this ACK passes were reached now.
  if (Status s = state_->RecordReached(ack, BrokerClock(options_).NowUnixMillis()); !s.ok()) {
    MC_LOG(warning) << "cannot record propagation: " << s.ToString();
  }
  snapshot_stale_ = true;
  if (Status s = state_->RecordAck(ack, BrokerClock(options_).NowUnix()); !s.ok()) {
    MC_LOG(error) << "cannot record ACK: " << s.ToString();
    return Fail("broker could not record the ACK");
  }
  if (relay_) MarkForward(ack.mirror_id(), ack.repo());
  MC_LOG(info) << "ack mirror=" << EscapeForLog(ack.mirror_id(), kMaxMirrorIdBytes)
               << " repo=" << ack.repo() << " serial=" << ack.serial()
               << " state=" << v1::AckState_Name(ack.state()) << " fetched=" << ack.bytes_fetched()
               << " reused=" << ack.bytes_reused() << " seconds=" << ack.seconds()
               << (ack.error().empty() ? "" : " error=") << EscapeForLog(ack.error(), 512);
  v1::ControlReply reply = Ok();
  reply.mutable_ack();
  return reply;
}

std::string Broker::AckRefusal(const v1::Ack& ack) {
  if (!PrintableId(ack.mirror_id())) return "a bad mirror id";
  if (Status s = ValidateRepoName(ack.repo()); !s.ok()) return s.message();
  if (ack.error().size() > 4096) return "error text too long";
  // A mirror can only hold what was published.
  const RepoHead head = state_->Head(ack.repo());
  if (ack.serial() > head.serial || ack.target_serial() > head.serial) {
    return "serial " + std::to_string(std::max(ack.serial(), ack.target_serial())) +
           " is above the broker's latest serial " + std::to_string(head.serial) + " of " +
           ack.repo();
  }
  return "";
}

v1::ControlReply Broker::HandleRelayAcks(const v1::RelayAcksRequest& request,
                                         const std::optional<PeerIdentity>& caller) {
  constexpr int kMaxRelayedAcks = 1000;
  if (request.acks_size() > kMaxRelayedAcks) {
    return Fail("refused: at most " + std::to_string(kMaxRelayedAcks) + " ACKs per RelayAcks");
  }
  // Plain TCP has no names: the forwarding relay shows as "relay".
  const std::string relay = caller ? caller->name : "relay";
  const std::shared_ptr<const AllowList> list = allow_ ? allow_->Get() : nullptr;
  const int64_t now = BrokerClock(options_).NowUnix();
  // Mirrors that report here themselves, heard from recently: not to be
  // overwritten by anyone's forwarded report.
  std::set<std::pair<std::string, std::string>> direct;
  if (auto rows = state_->Mirrors(); rows.ok()) {
    for (const v1::MirrorStatus& m : *rows) {
      if (m.via().empty() && now - m.last_seen_unix() < options_.silent_after_seconds) {
        direct.emplace(m.mirror_id(), m.repo());
      }
    }
  }
  uint32_t recorded = 0;
  for (const v1::RelayedAck& r : request.acks()) {
    const v1::Ack& ack = r.ack();
    // The checks of a mirror's own ACK, then the relay's limits.
    std::string why = AckRefusal(ack);
    if (!why.empty()) {
    } else if (ack.mirror_id() == relay) {
      why = "the relay's own id (its own ACKs come direct)";
    } else if (list && (list->NameHasRole(ack.mirror_id(), PeerRole::kPublish) ||
                        list->NameHasRole(ack.mirror_id(), PeerRole::kAdmin))) {
      why = "a name this broker lists as a publisher or admin";
    } else if (r.via().size() > 1024 ||
               !PrintableId(r.via().empty() ? "x" : r.via().substr(0, 128))) {
      why = "a bad relay path";
    } else if (direct.count({ack.mirror_id(), ack.repo()})) {
      why = "a mirror that reports to this broker directly";
    }
    if (!why.empty()) {
      LogOnce("relayack\n" + relay + "\n" + ack.mirror_id() + "\n" + why,
              "refused a forwarded ACK from relay " + EscapeForLog(relay, 128) + " for mirror " +
                  EscapeForLog(ack.mirror_id(), kMaxMirrorIdBytes) + ": " + why +
                  " (logged once per relay, mirror and reason)");
      continue;
    }
    const std::string via = r.via().empty() ? relay : relay + "/" + r.via();
    if (Status s = state_->RecordReached(ack, BrokerClock(options_).NowUnixMillis()); !s.ok()) {
      MC_LOG(warning) << "cannot record propagation: " << s.ToString();
    }
    if (Status s = state_->RecordAck(ack, now, via, std::min(r.last_seen_unix(), now)); !s.ok()) {
      MC_LOG(error) << "cannot record a forwarded ACK: " << s.ToString();
      return Fail("broker could not record the ACKs");
    }
    if (relay_) MarkForward(ack.mirror_id(), ack.repo());
    ++recorded;
  }
  if (recorded > 0) snapshot_stale_ = true;
  MC_LOG(debug) << "relay " << EscapeForLog(relay, 128) << " forwarded " << request.acks_size()
                << " ACKs, recorded " << recorded;
  v1::ControlReply reply = Ok();
  reply.mutable_relay_acks()->set_recorded(recorded);
  return reply;
}

void Broker::MarkForward(const std::string& mirror, const std::string& repo) {
  forward_dirty_[{mirror, repo}] = ++forward_generation_;
}

void Broker::ForwardAcks() {
  if (relay_->TakeConfirmed()) {
    for (const auto& [key, generation] : forward_inflight_) {
      auto it = forward_dirty_.find(key);
      if (it != forward_dirty_.end() && it->second == generation) forward_dirty_.erase(it);
    }
    forward_inflight_.clear();
  }
  const auto now = BrokerClock(options_).Steady();
  if (!forward_inflight_.empty() || forward_dirty_.empty() ||
      now - forward_offered_ < std::chrono::seconds(1)) {
    return;
  }
  // A batch every second at most: the latest row of each changed mirror.
  auto rows = state_->Mirrors();
  if (!rows.ok()) return;
  v1::RelayAcksRequest batch;
  std::map<std::pair<std::string, std::string>, uint64_t> sent;
  for (const v1::MirrorStatus& m : *rows) {
    auto it = forward_dirty_.find({m.mirror_id(), m.repo()});
    if (it == forward_dirty_.end()) continue;
    v1::RelayedAck* r = batch.add_acks();
    v1::Ack* ack = r->mutable_ack();
    ack->set_mirror_id(m.mirror_id());
    ack->set_repo(m.repo());
    ack->set_serial(m.serial());
    ack->set_target_serial(m.target_serial());
    ack->set_state(m.state());
    ack->set_bytes_fetched(m.bytes_fetched());
    ack->set_bytes_reused(m.bytes_reused());
    ack->set_bytes_signature(m.bytes_signature());
    ack->set_seconds(m.seconds());
    ack->set_error(m.error());
    r->set_via(m.via());
    r->set_last_seen_unix(m.last_seen_unix());
    sent.emplace(it->first, it->second);
    if (batch.acks_size() >= 500) break;
  }
  // Rows gone meanwhile are not forwarded.
  for (auto it = forward_dirty_.begin(); it != forward_dirty_.end();) {
    const bool listed = sent.count(it->first) > 0;
    it = (!listed && batch.acks_size() < 500) ? forward_dirty_.erase(it) : std::next(it);
  }
  if (batch.acks_size() == 0) return;
  if (relay_->OfferAcks(std::move(batch))) {
    forward_inflight_ = std::move(sent);
    forward_offered_ = now;
  }
}

v1::ControlReply Broker::HandleStatus() {
  auto status = BuildStatus();
  if (!status.ok()) return Fail("status: " + status.status().message());
  v1::ControlReply reply = Ok();
  *reply.mutable_status() = std::move(*status);
  return reply;
}

Result<v1::StatusReply> Broker::BuildStatus() {
  FlushSeen();
  const int64_t now = BrokerClock(options_).NowUnix();
  v1::StatusReply status;
  status.set_broker_id(options_.broker_id);
  status.set_now_unix(now);
  status.set_insecure_plaintext(!curve_);
  status.set_silent_after_seconds(options_.silent_after_seconds);
  // When the first serial after (repo, serial) was published, asked once per pair.
  std::map<std::pair<std::string, uint64_t>, std::optional<int64_t>> published_after;
  auto published = [&](const std::string& repo, uint64_t serial) -> Result<std::optional<int64_t>> {
    auto key = std::make_pair(repo, serial);
    auto it = published_after.find(key);
    if (it != published_after.end()) return it->second;
    MC_ASSIGN_OR_RETURN(std::optional<int64_t> t, state_->PublishedAfter(repo, serial));
    published_after.emplace(key, t);
    return t;
  };
  for (const auto& [repo, head] : state_->repos()) {
    auto* r = status.add_repos();
    r->set_repo(repo);
    r->set_serial(head.serial);
    r->set_manifest_sha256(head.manifest_sha256);
    *status.add_recall_windows() = RecallWindowOf(repo, head);
    auto* rs = status.add_repo_status();
    rs->set_repo(repo);
    rs->set_serial(head.serial);
    rs->set_manifest_entries(head.manifest_entries);
    MC_ASSIGN_OR_RETURN(std::optional<int64_t> at, published(repo, head.serial - 1));
    rs->set_published_unix(at.value_or(0));
  }
  MC_ASSIGN_OR_RETURN(auto recalls, state_->Recalls(20));
  for (auto& r : recalls) *status.add_recalls() = std::move(r);
  MC_ASSIGN_OR_RETURN(auto mirrors, state_->Mirrors());
  std::map<std::string, uint32_t> mirrors_of;
  for (auto& m : mirrors) {
    const uint64_t head = state_->Head(m.repo()).serial;
    ++mirrors_of[m.repo()];
    if (m.serial() < head) {
      m.set_lag_serials(head - m.serial());
      MC_ASSIGN_OR_RETURN(std::optional<int64_t> since, published(m.repo(), m.serial()));
      // Pruned from the log: at least as old as its oldest event.
      if (!since) {
        MC_ASSIGN_OR_RETURN(uint64_t oldest, state_->OldestEventSerial(m.repo()));
        if (oldest > 0) {
          MC_ASSIGN_OR_RETURN(since, published(m.repo(), oldest - 1));
        }
      }
      m.set_lag_seconds(since ? std::max<int64_t>(0, now - *since) : 0);
    }
    m.set_health(MirrorHealth(m, head, now, options_.silent_after_seconds));
    *status.add_mirrors() = std::move(m);
  }
  for (const auto& [repo, head] : state_->repos()) {
    (void)head;
    MC_ASSIGN_OR_RETURN(auto serials, state_->Propagation(repo, 6));
    for (auto& p : serials) {
      p.set_mirrors(mirrors_of[repo]);
      *status.add_propagation() = std::move(p);
    }
  }
  return status;
}

void Broker::RefreshSnapshot(bool changed) {
  using namespace std::chrono_literals;
  if (changed) snapshot_stale_ = true;
  const auto now = std::chrono::steady_clock::now();
  const auto age = now - snapshot_made_;
  if (snapshot_ && age < 1s && !(snapshot_stale_ && age >= 100ms)) return;
  auto status = BuildStatus();
  snapshot_made_ = now;
  if (!status.ok()) {
    LogOnce("snapshot\n" + status.status().message(),
            "status page: cannot read the state: " + status.status().ToString() +
                " (logged once per error; the page shows the last good snapshot)");
    return;
  }
  auto snapshot = std::make_shared<const v1::StatusReply>(std::move(*status));
  {
    std::lock_guard<std::mutex> lock(snapshot_mu_);
    snapshot_ = std::move(snapshot);
  }
  snapshot_stale_ = false;
}

void Broker::NoteSeen(const v1::HelloRequest& request, const std::optional<PeerIdentity>& caller) {
  if (request.repo().empty()) return;  // not a mirror's poll (a publisher, a status query)
  std::string id;
  if (caller) {
    // With CURVE a mirror is the name its key is listed under.
    if (caller->role != PeerRole::kMirror && caller->role != PeerRole::kRelay) return;
    id = caller->name;
  } else {
    if (!PrintableId(request.mirror_id())) return;
    id = request.mirror_id();
  }
  if (!ValidateRepoName(request.repo()).ok() || state_->repos().count(request.repo()) == 0) return;
  const uint64_t head = state_->Head(request.repo()).serial;
  seen_pending_[{id, request.repo()}] = MirrorSeen{
      id, request.repo(), std::min(request.serial(), head), BrokerClock(options_).NowUnix()};
  if (seen_pending_.size() >= 100000) FlushSeen();  // bounded, whatever peers send

  // Two processes reporting as one mirror: their instances alternate (a
  // restart changes the instance once and never goes back).
  const std::string& instance = request.instance();
  if (instance.empty() || !PrintableId(instance) || instance.size() > 64) return;
  if (instances_.size() >= 100000 && instances_.count(id) == 0) instances_.clear();
  Instances& in = instances_[id];
  const auto now = std::chrono::steady_clock::now();
  if (in.current == instance) {
    in.current_seen = now;
    return;
  }
  if (!in.current.empty() && instance == in.previous &&
      now - in.previous_seen < std::chrono::minutes(10)) {
    LogOnce("instances\n" + id,
            "two subscriber processes report as mirror " + EscapeForLog(id, kMaxMirrorIdBytes) +
                " (instances " + in.current + " and " + instance + " take turns): " +
                (caller ? "they share the key listed as " + id + "; give each mirror its own key"
                        : std::string("give each its own --id")) +
                "; their ACKs overwrite each other's row (logged once per mirror)");
  }
  in.previous = in.current;
  in.previous_seen = in.current_seen;
  in.current = instance;
  in.current_seen = now;
}

void Broker::FlushSeen() {
  seen_flushed_ = std::chrono::steady_clock::now();
  if (seen_pending_.empty()) return;
  std::vector<MirrorSeen> batch;
  batch.reserve(seen_pending_.size());
  for (auto& [key, seen] : seen_pending_) batch.push_back(std::move(seen));
  seen_pending_.clear();
  if (Status s = state_->RecordSeen(batch); !s.ok()) {
    MC_LOG(warning) << "cannot record " << batch.size() << " mirror polls: " << s.ToString();
  }
}

}  // namespace mirrorcast
