#include "tests/integration/hostile_broker.h"

#include <algorithm>
#include <ctime>

#include "core/crypto/sha256.h"
#include "core/manifest/chunks.h"
#include "core/net/endpoint.h"
#include "core/net/messages.h"
#include "tests/support/entries.h"

namespace mirrorcast::testing {

using namespace std::chrono_literals;

v1::SignedPayload ServedEvent(HostileBroker& broker, Manifest* manifest, uint64_t serial,
                              uint64_t previous, const Edits& edits) {
  Manifest& m = *manifest;
  m.set_serial(serial);
  v1::SignedPayload payload;
  auto* ev = payload.mutable_repo_changed();
  Edits sorted = edits;
  std::sort(sorted.begin(), sorted.end());
  for (const auto& [path, content] : sorted) {
    auto* change = ev->add_changes();
    if (!content) {
      change->set_kind(v1::CHANGE_DELETED);
      change->mutable_entry()->set_path(path);
      change->mutable_entry()->set_kind(v1::ENTRY_FILE);
      m.Erase(path);
      continue;
    }
    change->set_kind(m.Find(path) ? v1::CHANGE_MODIFIED : v1::CHANGE_ADDED);
    *change->mutable_entry() = FileEntryOf(path, *content);
    m.Put(FileEntryOf(path, *content));
    broker.ServeFile(*content);
  }
  ev->set_repo("demo");
  ev->set_serial(serial);
  ev->set_previous_serial(previous);
  ev->set_published_unix(time(nullptr));
  ev->set_expires_unix(time(nullptr) + 3600);
  ev->set_manifest_sha256(m.Digest());
  ev->set_manifest_entries(m.size());
  ev->set_change_count(static_cast<uint64_t>(ev->changes_size()));
  broker.ServeManifest(m);
  return payload;
}

HostileBroker::HostileBroker(std::string repo) : repo_(std::move(repo)) {}

HostileBroker::~HostileBroker() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void HostileBroker::Start() {
  control_.bind("tcp://127.0.0.1:0");
  events_.bind("tcp://127.0.0.1:0");
  content_.bind("tcp://127.0.0.1:0");
  port_ = *BoundPort(control_);
  events_port_ = *BoundPort(events_);
  content_port_ = *BoundPort(content_);
  thread_ = std::thread([this] { Loop(); });
}

void HostileBroker::AddEvent(uint64_t serial, std::string envelope) {
  std::lock_guard lock(mu_);
  history_[serial] = std::move(envelope);
}

void HostileBroker::RemoveEvent(uint64_t serial) {
  std::lock_guard lock(mu_);
  history_.erase(serial);
}

v1::EventsReply HostileBroker::HonestEvents(uint64_t since, uint32_t max) const {
  std::lock_guard lock(mu_);
  v1::EventsReply reply;
  reply.set_latest_serial(history_.empty() ? 0 : history_.rbegin()->first);
  reply.set_oldest_serial(history_.empty() ? 0 : history_.begin()->first);
  for (auto it = history_.upper_bound(since);
       it != history_.end() && static_cast<uint32_t>(reply.envelopes_size()) < max; ++it) {
    reply.add_envelopes(it->second);
  }
  return reply;
}

void HostileBroker::SetEvents(EventsAnswer answer) {
  std::lock_guard lock(mu_);
  events_answer_ = std::move(answer);
}

void HostileBroker::SetKeySet(std::string signed_key_set, uint64_t version) {
  std::lock_guard lock(mu_);
  key_set_ = std::move(signed_key_set);
  key_set_version_ = version;
}

void HostileBroker::SetHelloSerial(uint64_t serial) {
  std::lock_guard lock(mu_);
  hello_serial_ = serial;
}

void HostileBroker::ServeManifest(const Manifest& m) {
  std::lock_guard lock(mu_);
  auto index = BuildIndex(m, [&](const ChunkRef& ref, std::string bytes) {
    objects_[ref.id] = std::move(bytes);
    return Status::Ok();
  });
  objects_[index->Root()] = index->Encode();
}

void HostileBroker::ServeFile(const std::string& content) {
  std::lock_guard lock(mu_);
  objects_[Sha256Of(content)] = content;
}

void HostileBroker::SetContentDelay(std::chrono::milliseconds delay) {
  std::lock_guard lock(mu_);
  content_delay_ = delay;
}

void HostileBroker::SetBroadcasts(std::vector<std::string> envelopes) {
  SetBroadcasts([envelopes = std::move(envelopes)] { return envelopes; });
}

void HostileBroker::SetBroadcasts(std::function<std::vector<std::string>()> maker) {
  std::lock_guard lock(mu_);
  broadcasts_ = std::move(maker);
}

std::vector<v1::Ack> HostileBroker::acks() const {
  std::lock_guard lock(mu_);
  return acks_;
}

void HostileBroker::Loop() {
  auto next_broadcast = std::chrono::steady_clock::now();
  while (!stop_) {
    zmq::pollitem_t items[] = {{static_cast<void*>(control_), 0, ZMQ_POLLIN, 0},
                               {static_cast<void*>(content_), 0, ZMQ_POLLIN, 0},
                               {static_cast<void*>(events_), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 3, 20ms);
    if (items[0].revents & ZMQ_POLLIN) Control();
    if (items[1].revents & ZMQ_POLLIN) Content();
    if (items[2].revents & ZMQ_POLLIN) ReceiveMultipart(events_);  // subscriptions
    SendDueReplies();
    if (std::chrono::steady_clock::now() >= next_broadcast) {
      next_broadcast = std::chrono::steady_clock::now() + 100ms;
      std::function<std::vector<std::string>()> maker;
      {
        std::lock_guard lock(mu_);
        maker = broadcasts_;
      }
      const std::vector<std::string> out = maker ? maker() : std::vector<std::string>();
      for (const std::string& envelope : out) {
        std::string topic = repo_;
        topic.push_back('\0');
        std::vector<zmq::message_t> frames;
        frames.emplace_back(topic.data(), topic.size());
        frames.emplace_back(envelope.data(), envelope.size());
        SendMultipartNoWait(events_, frames);
      }
    }
  }
}

void HostileBroker::Control() {
  auto frames = ReceiveMultipart(control_);
  if (frames.size() != 2) return;
  v1::ControlRequest req;
  if (!ParseFrame(frames[1], 1 << 26, &req).ok()) return;
  v1::ControlReply reply;
  reply.set_request_id(req.request_id());
  reply.set_ok(true);
  if (req.has_hello()) {
    uint64_t head;
    {
      std::lock_guard lock(mu_);
      head = hello_serial_ != 0 ? hello_serial_ : (history_.empty() ? 0 : history_.rbegin()->first);
      if (!key_set_.empty()) {
        reply.mutable_hello()->set_key_set(key_set_);
        reply.mutable_hello()->set_keyset_version(key_set_version_);
      }
    }
    reply.mutable_hello()->set_events_port(events_port_);
    reply.mutable_hello()->set_content_port(content_port_);
    reply.mutable_hello()->set_broker_id("hostile");
    auto* r = reply.mutable_hello()->add_repos();
    r->set_repo(repo_);
    r->set_serial(head);
  } else if (req.has_events()) {
    ++events_requests_;
    EventsAnswer answer;
    {
      std::lock_guard lock(mu_);
      answer = events_answer_;
    }
    const uint64_t since = req.events().since_serial();
    const uint32_t max = req.events().max_events();
    *reply.mutable_events() = answer ? answer(since, max) : HonestEvents(since, max);
  } else if (req.has_ack()) {
    std::lock_guard lock(mu_);
    acks_.push_back(req.ack().ack());
    reply.mutable_ack();
  } else {
    reply.set_ok(false);
    reply.set_error("not served here");
  }
  std::vector<zmq::message_t> out;
  out.push_back(std::move(frames[0]));
  out.push_back(ToFrame(reply));
  SendMultipartNoWait(control_, out);
}

void HostileBroker::Content() {
  auto frames = ReceiveMultipart(content_);
  if (frames.size() != 2) return;
  v1::ContentRequest req;
  if (!ParseFrame(frames[1], 1 << 26, &req).ok()) return;
  std::chrono::milliseconds delay;
  {
    std::lock_guard lock(mu_);
    delay = content_delay_;
  }
  v1::ContentReply reply;
  reply.set_request_id(req.request_id());
  std::string object;
  bool found = false;
  uint64_t offset = 0, length = 0;
  {
    std::lock_guard lock(mu_);
    auto find = [&](const std::string& sha) {
      auto it = objects_.find(sha);
      if (it == objects_.end()) return;
      object = it->second;
      found = true;
    };
    if (req.has_range()) {
      find(req.range().sha256());
      offset = req.range().offset();
      length = req.range().length();
    } else if (req.has_object()) {
      find(req.object().sha256());
      offset = req.object().offset();
      length = req.object().length();
    }
  }
  if (!found) {
    // Batched and delta requests are not served: the client falls back to
    // one range per file and to whole files.
    reply.set_ok(false);
    reply.set_error("not here");
  } else {
    reply.set_ok(true);
    reply.set_total_size(object.size());
    reply.set_offset(offset);
    if (offset < object.size()) reply.set_data(object.substr(offset, length));
  }
  delayed_.push_back(Delayed{std::chrono::steady_clock::now() + delay, frames[0].to_string(),
                             reply.SerializeAsString()});
  SendDueReplies();
}

void HostileBroker::SendDueReplies() {
  const auto now = std::chrono::steady_clock::now();
  while (!delayed_.empty() && delayed_.front().due <= now) {
    std::vector<zmq::message_t> out;
    out.emplace_back(delayed_.front().peer.data(), delayed_.front().peer.size());
    out.emplace_back(delayed_.front().reply.data(), delayed_.front().reply.size());
    SendMultipartNoWait(content_, out);
    delayed_.pop_front();
  }
}

}  // namespace mirrorcast::testing
