#include "broker/broker.h"

#include <unistd.h>

#include <chrono>
#include <set>
#include <system_error>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/cli/signals.h"
#include "core/crypto/sha256.h"
#include "core/fs/atomic.h"
#include "core/fs/path.h"
#include "core/manifest/manifest.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

namespace fs = std::filesystem;
using Millis = std::chrono::milliseconds;

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

Broker::Broker(BrokerOptions options)
    : options_(std::move(options)),
      context_(1),
      control_(context_, zmq::socket_type::router),
      events_(context_, zmq::socket_type::xpub) {
  if (options_.broker_id.empty()) options_.broker_id = Hostname();
}

Broker::~Broker() { Stop(); }

Status Broker::Start() {
  for (const auto& file : options_.trust) {
    MC_RETURN_IF_ERROR(trust_.AddFile(file).WithContext("trust key " + file.string()));
  }
  if (trust_.empty()) return Status::InvalidArgument("no trusted publisher key (--trust)");
  if (options_.heartbeat_key) {
    auto key = SigningKey::LoadFile(*options_.heartbeat_key);
    if (!key.ok()) return key.status().WithContext("heartbeat key");
    heartbeat_key_ = std::move(*key);
  } else {
    MC_LOG(warning) << "no --heartbeat-key: mirrors cannot prove they are fresh";
  }
  std::error_code ec;
  if (!fs::is_directory(options_.tree_root, ec)) {
    return Status::NotFound("tree root " + options_.tree_root.string() + " is not a directory");
  }
  MC_ASSIGN_OR_RETURN(state_, BrokerState::Open(options_.state_dir));
  objects_ = std::make_unique<ObjectStore>(options_.state_dir / "objects");
  // Objects linked for a publish that never committed (a crash in between).
  MC_ASSIGN_OR_RETURN(auto uncommitted, state_->UncommittedObjects());
  for (const auto& [repo, sha] : uncommitted) {
    if (Status s = objects_->Remove(repo, sha); !s.ok()) MC_LOG(warning) << s.ToString();
  }
  MC_RETURN_IF_ERROR(state_->ClearPendingObjects(""));
  MC_RETURN_IF_ERROR(IndexOlderRepos());

  ConfigureSocket(control_, options_.listen, static_cast<int64_t>(kMaxControlMessageBytes));
  control_.set(zmq::sockopt::router_mandatory, 0);  // replies to vanished peers are dropped
  ConfigureSocket(events_, options_.listen, static_cast<int64_t>(4096));
  events_.set(zmq::sockopt::sndhwm, 10000);
  events_.set(zmq::sockopt::xpub_nodrop, 0);  // a slow subscriber loses messages, never us
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
  content.manifests_dir = options_.state_dir / "manifests";
  content.scratch_dir = options_.state_dir / "scratch";
  content.workers = options_.content_workers;
  content_ = std::make_unique<ContentServer>(context_, content);
  MC_RETURN_IF_ERROR(content_->Start());
  content_port_ = content_->port();

  stop_ = false;
  control_thread_ = std::thread([this] { ControlLoop(); });

  MC_LOG(info) << "serving control=" << options_.listen.WithPort(control_port_).ToString()
               << " events=" << events_port_ << " content=" << content_port_
               << " tree_root=" << options_.tree_root.string()
               << " repos=" << state_->repos().size() << " trusted_keys=" << trust_.size();
  if (options_.port_file) {
    MC_RETURN_IF_ERROR(WriteFileAtomic(*options_.port_file,
                                       options_.listen.WithPort(control_port_).ToString() + "\n")
                           .WithContext("port file"));
  }
  return Status::Ok();
}

void Broker::Stop() {
  if (control_thread_.joinable()) {
    stop_ = true;
    control_thread_.join();
  }
  if (content_) content_->Stop();
  control_.close();
  events_.close();
}

int Broker::Run() {
  Status started = Start();
  if (!started.ok()) {
    MC_LOG(error) << "cannot start: " << started.ToString();
    Stop();
    return 1;
  }
  while (!StopRequested()) std::this_thread::sleep_for(Millis(100));
  MC_LOG(info) << "stopping";
  Stop();
  return 0;
}

void Broker::SendHeartbeat() {
  if (!heartbeat_key_ || state_->repos().empty()) return;
  const int64_t now = Clock::Real().NowUnix();
  v1::SignedPayload payload;
  auto* hb = payload.mutable_heartbeat();
  hb->set_origin(options_.broker_id);
  hb->set_issued_unix(now);
  // Valid for a few intervals, so one lost heartbeat does not make anyone stale.
  hb->set_expires_unix(now + std::max<int64_t>(30, 3 * options_.heartbeat_interval.count()));
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

void Broker::ControlLoop() {
  auto next_heartbeat = std::chrono::steady_clock::now();
  while (!stop_) {
    if (std::chrono::steady_clock::now() >= next_heartbeat) {
      SendHeartbeat();
      next_heartbeat = std::chrono::steady_clock::now() + options_.heartbeat_interval;
    }
    zmq::pollitem_t items[] = {{static_cast<void*>(control_), 0, ZMQ_POLLIN, 0},
                               {static_cast<void*>(events_), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, Millis(200));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      MC_LOG(error) << "control poll failed: " << e.what();
      return;
    }
    if (items[0].revents & ZMQ_POLLIN) {
      for (int i = 0; i < 1000; ++i) {
        auto frames = ReceiveMultipart(control_);
        if (frames.empty()) break;
        HandleControl(frames);
      }
    }
    if (items[1].revents & ZMQ_POLLIN) {
      // Subscription changes; logged for operators.
      for (int i = 0; i < 1000; ++i) {
        auto frames = ReceiveMultipart(events_);
        if (frames.empty()) break;
        const std::string sub = frames[0].to_string();
        if (!sub.empty()) {
          MC_LOG(debug) << (sub[0] == 1 ? "subscribe " : "unsubscribe ")
                        << sub.substr(1, sub.find('\0', 1) - 1);
        }
      }
    }
  }
}

void Broker::HandleControl(std::vector<zmq::message_t>& frames) {
  if (frames.size() != 2) return;  // not a DEALER speaking our protocol
  v1::ControlRequest request;
  v1::ControlReply reply;
  Status parsed = ParseFrame(frames[1], kMaxControlMessageBytes, &request);
  if (!parsed.ok()) {
    MC_LOG(warning) << "bad control request: " << parsed.ToString();
    reply = Fail(parsed.message());
  } else if (request.protocol_version() != kProtocolVersion) {
    reply = Fail("unsupported protocol version " + std::to_string(request.protocol_version()));
  } else {
    reply = Dispatch(request);
  }
  reply.set_protocol_version(kProtocolVersion);
  reply.set_request_id(request.request_id());
  std::vector<zmq::message_t> out;
  out.push_back(std::move(frames[0]));
  out.push_back(ToFrame(reply));
  SendMultipartNoWait(control_, out);
}

v1::ControlReply Broker::Dispatch(const v1::ControlRequest& request) {
  switch (request.body_case()) {
    case v1::ControlRequest::kHello:
      return HandleHello(request.hello());
    case v1::ControlRequest::kPublish:
      return HandlePublish(request.publish());
    case v1::ControlRequest::kEvents:
      return HandleEvents(request.events());
    case v1::ControlRequest::kAck:
      return HandleAck(request.ack());
    case v1::ControlRequest::kStatus:
      return HandleStatus();
    default:
      return Fail("empty control request");
  }
}

v1::ControlReply Broker::HandleHello(const v1::HelloRequest& request) {
  MC_LOG(debug) << "hello from " << request.client();
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
  }
  return reply;
}

v1::ControlReply Broker::HandlePublish(const v1::PublishRequest& request) {
  const int64_t now = Clock::Real().NowUnix();
  auto opened = OpenEnvelope(request.envelope(), trust_);
  if (!opened.ok()) {
    MC_LOG(warning) << "refused publish: " << opened.status().ToString();
    return Fail("refused: " + opened.status().message());
  }
  if (!opened->payload.has_repo_changed()) return Fail("refused: publish carries no RepoChanged");
  const v1::RepoChanged& event = opened->payload.repo_changed();
  if (Status s = CheckRepoChanged(event, now); !s.ok()) {
    MC_LOG(warning) << "refused publish: " << s.ToString();
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
  auto manifest = Manifest::Parse(request.manifest());
  if (!manifest.ok()) return Fail("refused: manifest: " + manifest.status().message());
  if (manifest->repo() != repo || manifest->serial() != event.serial()) {
    return Fail("refused: manifest is for another repo or serial");
  }
  if (manifest->Digest() != event.manifest_sha256()) {
    return Fail("refused: manifest does not match the signed digest");
  }
  // The change list must take the previous manifest to this one, or mirrors
  // that apply it would all fail the digest check.
  // Fails closed: without the previous manifest the change list cannot be
  // checked, and a wrong one would make every mirror's apply fail.
  std::optional<Manifest> previous;
  if (head.serial > 0) {
    auto previous_bytes =
        ReadFileToString(state_->ManifestPath(repo, head.serial), kMaxControlMessageBytes);
    auto parsed = previous_bytes.ok() ? Manifest::Parse(*previous_bytes)
                                      : Result<Manifest>(previous_bytes.status());
    if (!parsed.ok() || parsed->Digest() != head.manifest_sha256) {
      MC_LOG(error) << "stored manifest of " << repo << " serial " << head.serial
                    << " is unusable: " << parsed.status().ToString();
      return Fail("broker cannot check the change list: its stored manifest of serial " +
                  std::to_string(head.serial) + " is missing or damaged");
    }
    previous = std::move(*parsed);
  }

  // Which file versions this serial names anew (to check, record and
  // retain), and which (path, version) pairs it stops naming: the change
  // list, O(changes); the whole manifest for a repo's first publish.
  VersionChanges versions;
  std::vector<const v1::FileEntry*> fresh;
  if (!previous || !state_->VersionsIndexed(repo)) {
    versions.complete = true;
    for (const auto& [path, entry] : manifest->entries()) {
      if (entry.kind() == v1::ENTRY_FILE) fresh.push_back(&entry);
    }
  } else {
    for (const v1::Change& change : event.changes()) {
      const v1::FileEntry* before = previous->Find(change.entry().path());
      if (before != nullptr && before->kind() == v1::ENTRY_FILE) {
        versions.retired.emplace_back(before->path(), before->sha256());
      }
      const v1::FileEntry* after = manifest->Find(change.entry().path());
      if (after != nullptr && after->kind() == v1::ENTRY_FILE) fresh.push_back(after);
    }
  }
  if (previous) {
    Status applied = previous->ApplyChanges(event.changes());
    if (!applied.ok() || previous->Digest() != event.manifest_sha256()) {
      return Fail("refused: the change list does not turn serial " + std::to_string(head.serial) +
                  " into the signed manifest");
    }
  }

  v1::ControlReply reply = Ok();
  std::vector<std::string> created;  // objects made for this publish, removed if it fails
  if (Status s =
          RecordFiles(repo, fresh, &versions, reply.mutable_publish()->mutable_linked(), &created);
      !s.ok()) {
    MC_LOG(warning) << "refused publish of " << repo << " serial " << event.serial() << ": "
                    << s.message();
    return Fail("refused: " + s.message());
  }
  auto undo = [&] {
    for (const std::string& sha : created) (void)objects_->Remove(repo, sha);
    (void)state_->ClearPendingObjects(repo);
  };

  std::error_code ec;
  fs::create_directories(state_->ManifestPath(repo, 0).parent_path(), ec);
  if (Status s =
          WriteFileAtomic(state_->ManifestPath(repo, event.serial()), request.manifest(), 0644);
      !s.ok()) {
    MC_LOG(error) << "cannot store manifest: " << s.ToString();
    undo();
    return Fail("broker could not store the manifest: " + s.message());
  }
  RepoHead next{event.serial(), event.manifest_sha256(), event.manifest_entries()};
  if (Status s = state_->CommitEvent(repo, next, request.envelope(), now, versions); !s.ok()) {
    MC_LOG(error) << "cannot commit event: " << s.ToString();
    undo();
    return Fail("broker could not store the event: " + s.message());
  }
  MC_LOG(info) << "published repo=" << repo << " serial=" << event.serial()
               << " changes=" << event.changes_size() << " entries=" << event.manifest_entries()
               << " new_versions=" << versions.published.size()
               << " retained=" << versions.objects.size() << " key=" << opened->key_id;
  FanOut(repo, request.envelope());
  if (Status s = state_->Prune(repo, options_.keep_events, options_.keep_manifests); !s.ok()) {
    MC_LOG(warning) << "prune " << repo << ": " << s.ToString();
  }
  PruneVersions(repo);
  reply.mutable_publish()->set_serial(event.serial());
  return reply;
}

Status Broker::RecordFiles(const std::string& repo, const std::vector<const v1::FileEntry*>& files,
                           VersionChanges* versions,
                           google::protobuf::RepeatedPtrField<v1::LinkedFile>* linked,
                           std::vector<std::string>* created) {
  const bool retain = options_.keep_versions > 0;
  if (retain) {
    std::vector<std::string> shas;
    shas.reserve(files.size());
    for (const v1::FileEntry* e : files) shas.push_back(e->sha256());
    MC_RETURN_IF_ERROR(state_->AddPendingObjects(repo, shas).WithContext("broker state"));
  }
  auto fail = [&](Status s) {
    for (const std::string& sha : *created) (void)objects_->Remove(repo, sha);
    created->clear();
    (void)state_->ClearPendingObjects(repo);
    return s;
  };
  std::set<std::string> retained;  // versions already seen in this publish
  size_t refused_links = 0;
  std::string first_refusal;
  for (const v1::FileEntry* entry : files) {
    const std::string shown = EscapeForLog(entry->path());
    // The same open and stat serve the check, the identity and the link.
    auto file = OpenInTree(options_.tree_root, repo, entry->path());
    if (!file.ok()) {
      return fail(
          Status::Rejected(shown + " is not in the tree as signed: " + file.status().message()));
    }
    const FileIdentity identity = IdentityOf(file->st);
    if (identity.size != entry->size()) {
      return fail(Status::Rejected(shown + " has " + std::to_string(identity.size) +
                                   " bytes in the tree, the signed size is " +
                                   std::to_string(entry->size())));
    }
    if (static_cast<int64_t>(file->st.st_mtim.tv_sec) != entry->mtime()) {
      return fail(Status::Rejected(shown + " changed after the publisher scanned it (mtime " +
                                   std::to_string(file->st.st_mtim.tv_sec) + " in the tree, " +
                                   std::to_string(entry->mtime()) +
                                   " signed); re-run the publisher"));
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
        if (!made.ok()) return fail(made.status());
        if (*made) {
          created->push_back(entry->sha256());
          versions->objects.push_back(StoredObject{entry->sha256(), **made});
          if ((*made)->kind == ObjectKind::kLink) {
            version.identity = (*made)->identity;  // the link moved the tree file's ctime
            v1::LinkedFile* l = linked->Add();
            l->set_path(entry->path());
            l->set_inode(identity.ino);
            l->set_size(identity.size);
            l->set_mtime_ns(identity.mtime_ns);
            l->set_ctime_before_ns(identity.ctime_ns);
            l->set_ctime_after_ns((*made)->identity.ctime_ns);
          }
        } else if (!why_not.empty()) {
          if (refused_links++ == 0) first_refusal = why_not;
        }
      }
    }
    versions->published.push_back(std::move(version));
  }
  if (refused_links > 0) {
    MC_LOG(warning) << "repo=" << repo << ": " << refused_links
                    << " new versions could not be retained (first: " << first_refusal
                    << "); they are served from the tree only while it holds them";
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

Status Broker::IndexOlderRepos() {
  for (const auto& [repo, head] : state_->repos()) {
    if (state_->VersionsIndexed(repo) || head.serial == 0) continue;
    // Published by a broker that kept no version table: index the head's
    // files as the tree holds them now (once; nothing is retained for them).
    auto bytes = ReadFileToString(state_->ManifestPath(repo, head.serial), kMaxControlMessageBytes);
    auto manifest = bytes.ok() ? Manifest::Parse(*bytes) : Result<Manifest>(bytes.status());
    if (!manifest.ok() || manifest->Digest() != head.manifest_sha256) {
      MC_LOG(error) << "cannot index repo " << repo << ": its stored manifest of serial "
                    << head.serial << " is missing or damaged; its files are served again after "
                    << "the next publish";
      continue;
    }
    VersionChanges versions;
    versions.complete = true;
    size_t skipped = 0;
    for (const auto& [path, entry] : manifest->entries()) {
      if (entry.kind() != v1::ENTRY_FILE) continue;
      auto file = OpenInTree(options_.tree_root, repo, path);
      if (!file.ok() || static_cast<uint64_t>(file->st.st_size) != entry.size() ||
          static_cast<int64_t>(file->st.st_mtim.tv_sec) != entry.mtime()) {
        ++skipped;
        continue;
      }
      versions.published.push_back(PublishedVersion{entry.sha256(), path, IdentityOf(file->st)});
    }
    MC_RETURN_IF_ERROR(state_->IndexVersions(repo, versions).WithContext("index " + repo));
    MC_LOG(info) << "indexed repo=" << repo << " serial=" << head.serial
                 << " files=" << versions.published.size() << " not_as_published=" << skipped;
  }
  return Status::Ok();
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

v1::ControlReply Broker::HandleEvents(const v1::EventsRequest& request) {
  if (Status s = ValidateRepoName(request.repo()); !s.ok()) return Fail(s.message());
  const uint32_t max = std::clamp<uint32_t>(request.max_events(), 1, kMaxEventsPerReply);
  auto stored = state_->EventsSince(request.repo(), request.since_serial(), max);
  if (!stored.ok()) return Fail("event log: " + stored.status().message());
  v1::ControlReply reply = Ok();
  auto* events = reply.mutable_events();
  for (auto& e : stored->envelopes) events->add_envelopes(std::move(e));
  events->set_latest_serial(state_->Head(request.repo()).serial);
  events->set_oldest_serial(stored->oldest_serial);
  events->set_gap(stored->oldest_serial > request.since_serial() + 1);
  return reply;
}

v1::ControlReply Broker::HandleAck(const v1::AckRequest& request) {
  const v1::Ack& ack = request.ack();
  if (!PrintableId(ack.mirror_id())) return Fail("bad mirror id");
  if (Status s = ValidateRepoName(ack.repo()); !s.ok()) return Fail(s.message());
  if (ack.error().size() > 4096) return Fail("error text too long");
  if (Status s = state_->RecordAck(ack, Clock::Real().NowUnix()); !s.ok()) {
    MC_LOG(error) << "cannot record ACK: " << s.ToString();
    return Fail("broker could not record the ACK");
  }
  MC_LOG(info) << "ack mirror=" << ack.mirror_id() << " repo=" << ack.repo()
               << " serial=" << ack.serial() << " state=" << v1::AckState_Name(ack.state())
               << " fetched=" << ack.bytes_fetched() << " reused=" << ack.bytes_reused()
               << " seconds=" << ack.seconds() << (ack.error().empty() ? "" : " error=")
               << ack.error();
  v1::ControlReply reply = Ok();
  reply.mutable_ack();
  return reply;
}

v1::ControlReply Broker::HandleStatus() {
  v1::ControlReply reply = Ok();
  auto* status = reply.mutable_status();
  status->set_broker_id(options_.broker_id);
  status->set_now_unix(Clock::Real().NowUnix());
  for (const auto& [repo, head] : state_->repos()) {
    auto* r = status->add_repos();
    r->set_repo(repo);
    r->set_serial(head.serial);
    r->set_manifest_sha256(head.manifest_sha256);
  }
  auto mirrors = state_->Mirrors();
  if (!mirrors.ok()) return Fail("mirror table: " + mirrors.status().message());
  for (auto& m : *mirrors) *status->add_mirrors() = std::move(m);
  return reply;
}

}  // namespace mirrorcast
