#include "core/net/publish_client.h"

#include <sstream>

#include "core/base/log.h"
#include "core/crypto/sha256.h"
#include "core/wire/envelope.h"

namespace mirrorcast {
namespace {

std::string Seconds(std::chrono::milliseconds d) {
  std::ostringstream out;
  out << static_cast<double>(d.count()) / 1000.0 << " s";
  return out.str();
}

}  // namespace

Result<BrokerRepoHead> FindRepoHead(const v1::HelloReply& hello, const std::string& repo) {
  BrokerRepoHead head;
  for (const v1::RepoSerial& r : hello.repos()) {
    if (r.repo() != repo) continue;
    head.serial = r.serial();
    head.root = r.manifest_sha256();
    if (head.serial > 0 && head.root.size() != kSha256Size) {
      return Status::Corruption("broker announced a malformed manifest digest for repo " + repo);
    }
    break;
  }
  for (const v1::RecallWindow& w : hello.recall_windows()) {
    if (w.repo() == repo) head.recall = w;
  }
  return head;
}

Status DescribeBrokerFailure(const Status& s, const HostPort& broker, std::string_view what,
                             std::chrono::milliseconds waited) {
  const std::string where = "broker " + broker.ToString();
  switch (s.code()) {
    case Status::Code::kTimeout:
      return Status::Timeout(where + " did not answer " + std::string(what) + " within " +
                             Seconds(waited));
    case Status::Code::kUnavailable:
      return Status::Unavailable(s.message() + " (" + std::string(what) + ", waited " +
                                 Seconds(waited) + ")");
    case Status::Code::kRejected:
      return Status::Rejected(where + " refused " + std::string(what) + ": " + s.message());
    default:
      return s.WithContext(std::string(what) + " via " + where);
  }
}

Result<std::string> RemoteChunks::LoadChunk(std::string_view id) {
  if (auto it = chunks_.find(id); it != chunks_.end()) return it->second;
  MC_ASSIGN_OR_RETURN(std::string bytes,
                      content_.FetchManifestObject(std::string(id), kMaxChunkBytes, &stats_));
  chunks_.emplace(std::string(id), bytes);
  return bytes;
}

Result<ManifestIndex> FetchManifestIndex(ContentClient& content, const std::string& root) {
  FetchStats stats;
  MC_ASSIGN_OR_RETURN(std::string bytes, content.FetchManifestObject(root, kMaxIndexBytes, &stats));
  return ManifestIndex::Decode(bytes);
}

Result<SealedEvent> SealRepoChanged(RepoChangedDraft draft, const SigningKey& key) {
  return SealRepoChanged(std::move(draft), std::vector<const SigningKey*>{&key});
}

Result<SealedEvent> SealRepoChanged(RepoChangedDraft draft,
                                    const std::vector<const SigningKey*>& keys) {
  if (keys.empty() || keys.size() > 1 + static_cast<size_t>(kMaxCosignatures)) {
    return Status::InvalidArgument("an event is signed by 1-" +
                                   std::to_string(1 + kMaxCosignatures) + " keys");
  }
  v1::SignedPayload payload;
  v1::RepoChanged& event = *payload.mutable_repo_changed();
  SealedEvent sealed;
  sealed.serial = draft.previous_serial + 1;
  event.set_repo(draft.repo);
  event.set_serial(sealed.serial);
  event.set_previous_serial(draft.previous_serial);
  event.set_published_unix(draft.now_unix);
  event.set_expires_unix(draft.expires_unix);
  event.set_manifest_sha256(draft.root);
  event.set_manifest_entries(draft.entries);
  event.set_change_count(draft.change_count);
  event.set_keyset_version(draft.keyset_version);
  if (draft.recall_of != 0) {
    event.set_recall_of(draft.recall_of);
    event.set_recall_reason(draft.recall_reason);
  }
  // A change list too large to broadcast is left out: mirrors and the
  // broker read it from the manifest chunks instead.
  sealed.changes_omitted = draft.change_bytes > draft.max_inline_change_bytes;
  if (sealed.changes_omitted) {
    event.set_changes_omitted(true);
  } else {
    for (v1::Change& change : draft.changes) *event.add_changes() = std::move(change);
  }
  // What every mirror will check; failing here beats a broker refusal.
  MC_RETURN_IF_ERROR(CheckRepoChanged(event, draft.now_unix)
                         .WithContext("the event built for repo " + draft.repo));
  sealed.envelope = SealEnvelope(std::move(payload), keys);
  if (sealed.envelope.size() > kMaxEnvelopeBytes) {
    return Status::Internal("the signed event is " + std::to_string(sealed.envelope.size()) +
                            " bytes, over the " + std::to_string(kMaxEnvelopeBytes) +
                            "-byte envelope limit");
  }
  return sealed;
}

Result<v1::PublishReply> SubmitPublish(ControlClient& control, const SealedEvent& event,
                                       uint64_t change_count, std::chrono::milliseconds timeout) {
  v1::ControlRequest request;
  request.mutable_publish()->set_envelope(event.envelope);
  // The broker checks and records every new file before it confirms: a
  // first publish of millions of files takes it minutes, not seconds.
  // 1 ms per change: a first publish of 5 M files took a loaded broker
  // 330 us per file (and 200 us per change was not enough).
  const auto confirm_timeout = timeout + std::chrono::milliseconds(change_count);
  Result<v1::ControlReply> reply = control.Call(std::move(request), confirm_timeout);
  if (!reply.ok()) {
    Status failure =
        DescribeBrokerFailure(reply.status(), control.broker(),
                              "publish of serial " + std::to_string(event.serial), confirm_timeout);
    if (failure.code() == Status::Code::kTimeout) {
      failure = Status::Timeout(failure.message() +
                                "; it may still accept it (the next run will see its serial)");
    }
    return failure;
  }
  if (reply->has_publish() && reply->publish().serial() != event.serial) {
    MC_LOG(warning) << "broker confirmed serial " << reply->publish().serial() << ", expected "
                    << event.serial;
  }
  return std::move(*reply->mutable_publish());
}

int PublishExitCode(const Status& status) {
  switch (status.code()) {
    case Status::Code::kOk:
      return 0;
    case Status::Code::kInvalidArgument:
      return 2;
    case Status::Code::kUnavailable:
    case Status::Code::kTimeout:
      return 3;
    default:
      return 1;
  }
}

}  // namespace mirrorcast
