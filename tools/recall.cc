// mirrorcast recall --broker HOST:PORT --key KEYFILE --repo R --to N --reason TEXT:
// publishes serial N's content again as a new serial (the head + 1), signed
// with a publish key, so every mirror is back at serial N's tree within
// seconds (docs/operations.md, "Recalling a bad push"; docs/protocol.md,
// "Recall").
//
// Steps, everything checked before anything is signed:
//   1. Hello: the broker's head serial and root, and its recall window;
//   2. serial N's event from the broker's log, verified with the trusted keys
//      (the signing key's own public key, and --trust): its root is what the
//      recall signs;
//   3. the manifest index of the head and of N (each checked against its
//      root), and the diff of the two from the chunks that differ only;
//   4. RepoChanged(head + 1, recall_of N, reason) sealed and submitted as any
//      publish (core/net/publish_client.h). The broker checks it like every
//      publish, and that every version it names is one it still serves.
#include <chrono>
#include <cmath>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/cli/options.h"
#include "core/cli/transport.h"
#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/manifest/chunks.h"
#include "core/net/content_client.h"
#include "core/net/control_client.h"
#include "core/net/endpoint.h"
#include "core/net/publish_client.h"
#include "core/wire/envelope.h"
#include "tools/commands.h"

namespace po = boost::program_options;

namespace mirrorcast {
namespace {

constexpr const char* kProgram = "mirrorcast recall";
constexpr int64_t kSecondsPerDay = 24 * 60 * 60;

struct RecallOptions {
  HostPort broker;
  ClientTransport transport;  // CURVE keys (a publish key of the allow-list); nullopt: plain TCP
  std::filesystem::path key_file;
  std::vector<std::filesystem::path> trust;
  std::string repo;
  uint64_t to = 0;
  std::string reason;
  int expiry_days = 30;
  std::chrono::milliseconds timeout{60000};
};

struct RecallOutcome {
  bool published = false;  // false: the head already has serial `to`'s content
  uint64_t serial = 0;     // the new serial (or the head when nothing was published)
  uint64_t previous_serial = 0;
  uint64_t added = 0, modified = 0, deleted = 0;
  uint64_t entries = 0;
};

Status CheckReason(const std::string& reason) {
  if (reason.empty() || reason.size() > kMaxRecallReasonBytes) {
    return Status::InvalidArgument("bad --reason: must be 1-" +
                                   std::to_string(kMaxRecallReasonBytes) + " bytes");
  }
  for (unsigned char c : reason) {
    if (c < 0x20 || c == 0x7f) {
      return Status::InvalidArgument("bad --reason: must be one line without control characters");
    }
  }
  return Status::Ok();
}

std::string DescribeWindow(const v1::RecallWindow& w) {
  std::string kept = "the broker keeps replaced versions for " + std::to_string(w.keep_versions()) +
                     " serials (--keep-versions)";
  if (w.oldest() == 0) return "no serial can be recalled now (" + kept + ")";
  return "serials " + std::to_string(w.oldest()) + " to " + std::to_string(w.newest()) +
         " can be recalled (" + kept + ")";
}

// Serial `to`'s event from the broker's log, verified: the root it signed.
Result<v1::RepoChanged> TargetEvent(const RecallOptions& options, ControlClient& control,
                                    const TrustStore& trust) {
  Result<v1::EventsReply> events = control.Events(options.repo, options.to - 1, 1, options.timeout);
  if (!events.ok()) {
    return DescribeBrokerFailure(events.status(), options.broker,
                                 "the event of serial " + std::to_string(options.to),
                                 options.timeout);
  }
  if (events->envelopes_size() == 0) {
    return Status::Rejected("the broker's event log no longer holds serial " +
                            std::to_string(options.to) + " of " + options.repo);
  }
  Result<OpenedEnvelope> opened = OpenEnvelope(events->envelopes(0), trust);
  if (!opened.ok()) {
    return Status::Rejected("the event of serial " + std::to_string(options.to) +
                            " does not verify with the trusted keys (" + opened.status().message() +
                            "); give its signer's public key with --trust");
  }
  if (!opened->payload.has_repo_changed()) {
    return Status::Rejected("the broker's event of serial " + std::to_string(options.to) +
                            " is not a RepoChanged");
  }
  v1::RepoChanged event = std::move(*opened->payload.mutable_repo_changed());
  if (event.repo() != options.repo || event.serial() != options.to ||
      event.manifest_sha256().size() != kSha256Size) {
    return Status::Rejected("the broker answered serial " + std::to_string(options.to) + " of " +
                            options.repo + " with serial " + std::to_string(event.serial()) +
                            " of " + EscapeForLog(event.repo()));
  }
  return event;
}

Result<RecallOutcome> RecallImpl(const RecallOptions& options, zmq::context_t& context) {
  MC_RETURN_IF_ERROR(CheckReason(options.reason));
  Result<SigningKey> key = SigningKey::LoadFile(options.key_file);
  if (!key.ok()) {
    return Status::InvalidArgument("cannot load signing key " + options.key_file.string() + ": " +
                                   key.status().message());
  }
  TrustStore trust;
  trust.Add(key->public_key());
  for (const auto& file : options.trust) {
    if (Status s = trust.AddFile(file); !s.ok()) {
      return Status::InvalidArgument("cannot load --trust " + file.string() + ": " + s.message());
    }
  }

  ControlClient control(context, options.broker, options.transport);
  Result<v1::HelloReply> hello =
      control.Hello(std::string(kProgram) + " repo=" + options.repo, options.timeout);
  if (!hello.ok()) {
    return DescribeBrokerFailure(hello.status(), options.broker, "hello", options.timeout);
  }
  MC_ASSIGN_OR_RETURN(const BrokerRepoHead head, FindRepoHead(*hello, options.repo));
  if (head.serial == 0) {
    return Status::Rejected("broker " + options.broker.ToString() + " has no repo " + options.repo);
  }
  if (options.to >= head.serial) {
    return Status::Rejected("serial " + std::to_string(options.to) +
                            " is not before the latest serial of " + options.repo + ", " +
                            std::to_string(head.serial) + "; a recall goes back to an earlier one");
  }
  if (head.recall.repo() != options.repo) {
    return Status::Rejected("broker " + options.broker.ToString() +
                            " does not announce a recall window (it predates recalls)");
  }
  if (options.to < head.recall.oldest() || options.to > head.recall.newest()) {
    return Status::Rejected("refused: serial " + std::to_string(options.to) +
                            " is outside the recall window of " + options.repo + " at serial " +
                            std::to_string(head.serial) + ": " + DescribeWindow(head.recall) +
                            ". Nothing was signed or changed");
  }
  MC_ASSIGN_OR_RETURN(const v1::RepoChanged target, TargetEvent(options, control, trust));

  const uint32_t content_port = hello->content_port();
  if (content_port == 0 || content_port > 65535) {
    return Status::Unavailable("broker " + options.broker.ToString() +
                               " announced no usable content port");
  }
  ContentClientOptions content_options;
  content_options.stall_timeout = options.timeout;
  content_options.transport = options.transport;
  ContentClient content(context, options.broker.WithPort(static_cast<uint16_t>(content_port)),
                        options.repo, content_options);
  auto index_of = [&](const std::string& root, uint64_t serial) -> Result<ManifestIndex> {
    Result<ManifestIndex> index = FetchManifestIndex(content, root);
    if (!index.ok()) {
      return DescribeBrokerFailure(index.status(), options.broker,
                                   "the manifest index of serial " + std::to_string(serial),
                                   options.timeout);
    }
    return index;
  };
  MC_ASSIGN_OR_RETURN(const ManifestIndex from, index_of(head.root, head.serial));
  MC_ASSIGN_OR_RETURN(const ManifestIndex to, index_of(target.manifest_sha256(), options.to));
  if (to.entries() != target.manifest_entries()) {
    return Status::Corruption("the manifest of serial " + std::to_string(options.to) + " has " +
                              std::to_string(to.entries()) + " entries, its event says " +
                              std::to_string(target.manifest_entries()));
  }

  // The change list head -> N, read from the chunks that differ only; held
  // only while it could travel in the event.
  RemoteChunks chunks(content);
  RecallOutcome outcome;
  outcome.previous_serial = head.serial;
  outcome.serial = head.serial;
  outcome.entries = to.entries();
  RepoChangedDraft draft;
  Status diffed = DiffIndexes(from, chunks, to, chunks, [&](v1::Change change) {
    switch (change.kind()) {
      case v1::CHANGE_ADDED:
        ++outcome.added;
        break;
      case v1::CHANGE_MODIFIED:
        ++outcome.modified;
        break;
      default:
        ++outcome.deleted;
        break;
    }
    ++draft.change_count;
    draft.change_bytes += change.ByteSizeLong() + 4;
    if (draft.change_bytes > draft.max_inline_change_bytes) {
      std::vector<v1::Change>().swap(draft.changes);
    } else {
      draft.changes.push_back(std::move(change));
    }
    return Status::Ok();
  });
  if (!diffed.ok()) {
    return diffed.WithContext("reading the manifests of serials " + std::to_string(head.serial) +
                              " and " + std::to_string(options.to));
  }
  MC_LOG(info) << "recall repo=" << options.repo << " from serial " << head.serial << " to "
               << options.to << ": changes=" << draft.change_count << " (manifest chunks read "
               << chunks.bytes_fetched() << " bytes)";
  if (draft.change_count == 0) return outcome;  // the head already is serial N's content

  const int64_t now = Clock::Real().NowUnix();
  draft.repo = options.repo;
  draft.previous_serial = head.serial;
  draft.root = target.manifest_sha256();
  draft.entries = target.manifest_entries();
  draft.now_unix = now;
  draft.expires_unix = now + options.expiry_days * kSecondsPerDay;
  draft.recall_of = options.to;
  draft.recall_reason = options.reason;
  draft.keyset_version = hello->keyset_version();
  const uint64_t change_count = draft.change_count;
  MC_ASSIGN_OR_RETURN(const SealedEvent sealed, SealRepoChanged(std::move(draft), *key));
  MC_LOG(info) << "publishing recall repo=" << options.repo << " serial=" << sealed.serial
               << " recall_of=" << options.to << " changes=" << change_count
               << (sealed.changes_omitted ? " (change list left out)" : "");
  MC_RETURN_IF_ERROR(SubmitPublish(control, sealed, change_count, options.timeout).status());
  outcome.published = true;
  outcome.serial = sealed.serial;
  return outcome;
}

}  // namespace

int RecallMain(int argc, char** argv) {
  const ProgramInfo info{
      kProgram,
      "mirrorcast recall --broker HOST:PORT --key KEYFILE --repo R --to N --reason TEXT "
      "--curve-key KEYFILE --broker-key PUBFILE [options]",
      "Rolls every mirror of repo R back to the content of serial N after a bad push: "
      "publishes serial N's manifest again as a new serial (the broker's latest + 1, so serials "
      "only grow), signed with a publish key and carrying TEXT as the reason. Mirrors apply it "
      "like any update and fetch only what they do not hold; the files come from the broker's "
      "retained store, so N must be within the broker's recall window (the serials whose "
      "replaced versions it still keeps, --keep-versions); a serial outside it is refused "
      "before anything is signed. 'mirrorcast status' shows the recall and its reason. The "
      "connection's CURVE key (--curve-key) must be on the broker's allow-list as 'publish "
      "NAME'.\n"
      "The origin tree is not touched: fix it before the next mirrorcast-publish, which builds "
      "on the recalled serial and publishes whatever in the tree still differs from it.\n"
      "Prints 'recalled repo=R serial=S = serial N (...)'. Exit codes: 0 recalled (or the "
      "latest serial already has serial N's content); 1 refused (outside the window, untrusted "
      "key, another publish won the serial) or failed; 2 usage error; 3 broker unreachable or "
      "timed out."};
  po::options_description options("Recall options");
  options.add_options()("broker", po::value<std::string>()->required(),
                        "origin broker control endpoint, HOST:PORT or [V6]:PORT")(
      "key", po::value<std::string>()->required(),
      "Ed25519 secret key file of a publish key the broker trusts (mode 0600)")(
      "repo", po::value<std::string>()->required(), "repository name")(
      "to", po::value<uint64_t>()->required(),
      "the serial whose content every mirror goes back to (before the latest, within the "
      "broker's recall window)")(
      "reason", po::value<std::string>()->required(),
      "why, in one line (1-1024 bytes): shown by the broker, the mirrors and 'mirrorcast "
      "status'")("trust", po::value<std::vector<std::string>>()->composing(),
                 "public key file that may have signed serial N's event (repeatable; the "
                 "--key's own public key is always trusted)")(
      "expiry-days", po::value<int>()->default_value(30),
      "days after which mirrors refuse the recall event (1-3650)")(
      "timeout", po::value<double>()->default_value(60), "seconds to wait for each broker reply");
  options.add(ClientTransportOptions());
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;

  RecallOptions recall;
  recall.transport = ClientTransportFromOptions(*vm, kProgram);
  Result<HostPort> broker = ParseHostPort((*vm)["broker"].as<std::string>());
  if (!broker.ok()) throw std::runtime_error("bad --broker: " + broker.status().message());
  if (broker->port == 0) throw std::runtime_error("bad --broker: the port must not be 0");
  recall.broker = *broker;
  recall.key_file = (*vm)["key"].as<std::string>();
  recall.repo = (*vm)["repo"].as<std::string>();
  if (Status s = ValidateRepoName(recall.repo); !s.ok()) {
    throw std::runtime_error("bad --repo: " + s.message());
  }
  recall.to = (*vm)["to"].as<uint64_t>();
  if (recall.to == 0) throw std::runtime_error("bad --to: serials start at 1");
  recall.reason = (*vm)["reason"].as<std::string>();
  if (vm->count("trust")) {
    for (const auto& t : (*vm)["trust"].as<std::vector<std::string>>())
      recall.trust.emplace_back(t);
  }
  recall.expiry_days = (*vm)["expiry-days"].as<int>();
  if (recall.expiry_days < 1 || recall.expiry_days > 3650) {
    throw std::runtime_error("bad --expiry-days: must be 1..3650");
  }
  recall.timeout = TimeoutOption(*vm);

  zmq::context_t context;
  Result<RecallOutcome> outcome = Status::Internal("not run");
  try {
    outcome = RecallImpl(recall, context);
  } catch (const zmq::error_t& e) {
    outcome = Status::Unavailable("broker " + recall.broker.ToString() + ": " + e.what());
  }
  if (!outcome.ok()) {
    std::cerr << kProgram << ": error: " << EscapeForLog(outcome.status().message(), 4096) << "\n";
    return PublishExitCode(outcome.status());
  }
  if (!outcome->published) {
    std::cout << "nothing to recall: repo=" << recall.repo << " serial " << outcome->serial
              << " already has the content of serial " << recall.to << std::endl;
    return 0;
  }
  std::cout << "recalled repo=" << recall.repo << " serial=" << outcome->serial << " = serial "
            << recall.to << " (changes back from serial " << outcome->previous_serial << ": added "
            << outcome->added << ", modified " << outcome->modified << ", deleted "
            << outcome->deleted << "; entries=" << outcome->entries << ")\n"
            << "reason: " << EscapeForLog(recall.reason, kMaxRecallReasonBytes) << std::endl;
  return 0;
}

}  // namespace mirrorcast
