// mirrorcast-publish: parses options and runs one Publish() (publisher/publisher.h).
#include <chrono>
#include <cmath>
#include <iostream>
#include <stdexcept>
#include <string>
#include <zmq.hpp>

#include "core/cli/options.h"
#include "core/cli/transport.h"
#include "core/net/endpoint.h"
#include "core/net/publish_client.h"
#include "publisher/publisher.h"

namespace po = boost::program_options;

namespace mirrorcast {
namespace {

constexpr const char* kProgram = "mirrorcast-publish";

const ProgramInfo kInfo{
    kProgram,
    "mirrorcast-publish --broker HOST:PORT --key KEYFILE --repo R --tree DIR --curve-key "
    "KEYFILE --broker-key PUBFILE [options]",
    "Finds what changed in the repository tree DIR since the last serial the broker holds, "
    "signs a RepoChanged event for it and hands it to the origin broker. Exits 0 only once the "
    "broker has durably accepted the event; when nothing changed it publishes nothing and "
    "exits 0. Unchanged files are never re-read (a persistent hash cache in --state).\n"
    "Prints 'scan: entries=N hashed_files=H hashed_bytes=B cache_hits=C', then "
    "'published repo=R serial=N changes=K (...)' or 'nothing changed: repo=R stays at serial "
    "N'.\n"
    "The connection uses CURVE (--curve-key, listed as 'publish NAME' in the broker's "
    "allow-list, and --broker-key); --key is the separate Ed25519 key that signs the event.\n"
    "A publish that would delete more than --max-delete-percent of the repo's entries, or "
    "leave it empty, is refused unless --force: a wrong --tree or an unmounted volume would "
    "otherwise empty every mirror within seconds.\n"
    "Exit codes: 0 published or nothing to do; 1 publish failed, refused by the broker or by "
    "the deletion checks; "
    "2 usage or configuration error; 3 broker unreachable or timed out."};

int PublishMain(int argc, char** argv) {
  po::options_description options("Publish options");
  options.add_options()("broker", po::value<std::string>()->required(),
                        "origin broker control endpoint, HOST:PORT or [V6]:PORT")(
      "key", po::value<std::string>()->required(),
      "Ed25519 secret key file (from 'mirrorcast keygen'; must be mode 0600)")(
      "cosign-key", po::value<std::vector<std::string>>()->composing(),
      "another secret key file that signs the event too (repeatable): a key-set publisher "
      "rule with threshold=K needs K distinct signers")(
      "repo", po::value<std::string>()->required(),
      "repository name: 1-64 of [A-Za-z0-9._-], not starting with '.'")(
      "tree", po::value<std::string>()->required(), "root directory of the repository tree")(
      "paths-from", po::value<std::string>(),
      "rescan only the paths listed in FILE (one repo-relative path per line; blank lines and "
      "'#' comments ignored; '-' reads stdin) instead of scanning the whole tree; a listed "
      "path that no longer exists is deleted, a listed directory is scanned whole")(
      "timeout", po::value<double>()->default_value(60),
      "seconds to wait for each broker reply (hello, manifest, upload); the publish "
      "confirmation may take 1 ms more per change, since the broker checks every new file")(
      "state", po::value<std::string>()->default_value(kDefaultPublishStateDir),
      "state directory: last published manifest (<repo>.manifest.db) and hash cache "
      "(<repo>.hashcache.db); created if missing")(
      "expiry-days", po::value<int>()->default_value(30),
      "days after which mirrors refuse the event (1-3650)")(
      "max-inline-change-bytes", po::value<uint64_t>()->default_value(kMaxInlineChangeBytes),
      "a change list larger than this (serialized) is left out of the broadcast event: the new "
      "manifest chunks are uploaded instead and mirrors diff against them (1 to the default)")(
      "max-upload-bytes", po::value<uint64_t>()->default_value(kMaxPutObjectsBytes),
      "manifest objects sent per upload request when the change list is left out (1 MiB to "
      "the default)")(
      "max-delete-percent", po::value<double>()->default_value(10),
      "refuse a publish that would delete more than this percentage of the repo's entries "
      "(0-100); a publish that would leave the repo empty is always refused without --force")(
      "force", po::bool_switch(),
      "publish even when the deletion checks above refuse (a repo that really is being "
      "emptied or rebuilt)");

  options.add(ClientTransportOptions());
  auto vm = ParseCommandLine(argc, argv, kInfo, options);
  if (!vm) return 0;

  PublisherOptions publish;
  publish.transport = ClientTransportFromOptions(*vm, kProgram);
  Result<HostPort> broker = ParseHostPort((*vm)["broker"].as<std::string>());
  if (!broker.ok()) throw std::runtime_error("bad --broker: " + broker.status().message());
  publish.broker = *broker;
  publish.key_file = (*vm)["key"].as<std::string>();
  publish.cosign_key_files = PathList(*vm, "cosign-key");
  publish.repo = (*vm)["repo"].as<std::string>();
  publish.tree = (*vm)["tree"].as<std::string>();
  if (vm->count("paths-from")) publish.paths_from = (*vm)["paths-from"].as<std::string>();
  publish.timeout = TimeoutOption(*vm);
  publish.state_dir = (*vm)["state"].as<std::string>();
  publish.expiry_days = (*vm)["expiry-days"].as<int>();
  publish.max_inline_change_bytes = (*vm)["max-inline-change-bytes"].as<uint64_t>();
  if (publish.max_inline_change_bytes < 1 ||
      publish.max_inline_change_bytes > kMaxInlineChangeBytes) {
    throw std::runtime_error("bad --max-inline-change-bytes: must be 1.." +
                             std::to_string(kMaxInlineChangeBytes));
  }
  publish.max_upload_bytes = (*vm)["max-upload-bytes"].as<uint64_t>();
  if (publish.max_upload_bytes < (1u << 20) || publish.max_upload_bytes > kMaxPutObjectsBytes) {
    throw std::runtime_error("bad --max-upload-bytes: must be 1048576.." +
                             std::to_string(kMaxPutObjectsBytes));
  }
  const double max_delete = (*vm)["max-delete-percent"].as<double>();
  if (!std::isfinite(max_delete) || max_delete < 0 || max_delete > 100) {
    throw std::runtime_error("bad --max-delete-percent: must be between 0 and 100");
  }
  publish.max_delete_fraction = max_delete / 100;
  publish.force = (*vm)["force"].as<bool>();
  publish.client_name = std::string(kProgram) + " repo=" + publish.repo;

  zmq::context_t context;
  Result<PublishOutcome> outcome = Publish(publish, context);
  if (!outcome.ok()) {
    std::string message = outcome.status().message();
    for (char& c : message) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    std::cerr << kProgram << ": error: " << message << "\n";
    return PublishExitCode(outcome.status());
  }
  std::cout << DescribeScan(outcome->scan) << "\n" << DescribeOutcome(*outcome) << std::endl;
  return 0;
}

}  // namespace
}  // namespace mirrorcast

int main(int argc, char** argv) {
  return mirrorcast::RunMain("mirrorcast-publish", mirrorcast::PublishMain, argc, argv);
}
