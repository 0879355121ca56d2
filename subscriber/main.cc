// mirrorcast-subscriber: parses options and runs the Subscriber library.
#include <unistd.h>

#include <iostream>

#include "core/base/log.h"
#include "core/cli/options.h"
#include "core/cli/signals.h"
#include "core/cli/transport.h"
#include "core/fs/lock.h"
#include "core/mirror/subscriber.h"
#include "core/mirror/trace_files.h"
#include "core/net/endpoint.h"

namespace po = boost::program_options;

namespace {

// See --delete-delay: dnf's default metadata_expire.
constexpr int kDefaultDeleteDelay = 48 * 3600;

int SubscriberMain(int argc, char** argv) {
  using namespace mirrorcast;
  po::options_description options("Subscriber options");
  // clang-format off
  options.add_options()
      ("broker", po::value<std::vector<std::string>>()->composing()->required(),
       "HOST:PORT of the broker's control socket (the one address a mirror needs). Repeatable: "
       "the first (this mirror's relay, say) is used while it works; when it has been "
       "unreachable or stale for --failover-after the next that answers serves (the origin or "
       "another relay), and the first is taken back once it answers again")
      ("failover-after", po::value<int>()->default_value(30),
       "with several --broker: seconds the current broker may be unreachable or stale before "
       "the mirror switches to the next")
      ("trust", po::value<std::vector<std::string>>()->composing(),
       "fixed keys: public key file of the origin whose events this mirror accepts "
       "(repeatable). Use --trust or --root-key")
      ("root-key", po::value<std::vector<std::string>>()->composing(),
       "instead of --trust/--heartbeat-trust: public key file of the offline root that signs "
       "key sets (repeatable; any one may sign the first key set). The broker hands out the "
       "current key set (which keys may sign events of which repos, and heartbeats); it is "
       "kept in STATE and replaced only by a newer one the current root signed")
      ("heartbeat-trust", po::value<std::vector<std::string>>()->composing(),
       "fixed keys: public key file trusted to sign heartbeats only: the origin broker's online "
       "key (repeatable). Enables freshness tracking: see --stale-after (with --root-key the "
       "key set names the heartbeat keys)")
      ("stale-after", po::value<int>()->default_value(60),
       "report this mirror stale (log, ACK, status) once the newest valid heartbeat is older "
       "than this many seconds")
      ("repo", po::value<std::string>()->required(), "repository name to mirror")
      ("tree", po::value<std::string>()->required(),
       "the served mirror directory (created if missing)")
      ("state", po::value<std::string>()->required(),
       "state directory: subscriber.db (serial, manifest, journal, pending ACKs), staging")
      ("id", po::value<std::string>()->required(), "this mirror's name, reported in ACKs")
      ("staging", po::value<std::string>(),
       "staging directory on the tree's filesystem (default: STATE/staging when on the same "
       "filesystem, else TREE/.mirrorcast-staging)")
      ("metadata", po::value<std::vector<std::string>>()->composing(),
       "metadata pattern, applied after content (repeatable; 'dir/' matches a directory "
       "component, anything else a file name). Default: repodata/ dists/ Release InRelease")
      ("delete-delay", po::value<int>()->default_value(kDefaultDeleteDelay),
       "grace period in seconds: files an update deletes (old packages, old metadata files) stay "
       "in the tree this long, so clients that fetched the previous metadata still find every "
       "file it names. The default, 172800 (48 h), is dnf's default metadata_expire, the "
       "longest a stock client keeps metadata before fetching it again; it also covers apt "
       "clients and the 1-1.5 days upstream archives keep superseded files. Deletions due "
       "survive restarts. 0: delete at the end of the apply")
      ("trace-name", po::value<std::string>(),
       "after each applied serial, write the Debian trace file project/trace/NAME and Arch's "
       "lastsync into the tree, for existing mirror checkers (default NAME: this host's name; "
       "a path the signed manifest names is left alone)")
      ("no-trace-files", po::bool_switch(), "write neither project/trace/NAME nor lastsync")
      ("delta-min-bytes", po::value<uint64_t>()->default_value(64 * 1024),
       "files smaller than this are fetched whole instead of by librsync delta")
      ("poll-interval", po::value<int>()->default_value(30),
       "seconds between checks of the broker's latest serial (besides events)")
      ("stall-timeout", po::value<int>()->default_value(30),
       "seconds without data after which a transfer is aborted and retried")
      ("min-rate", po::value<uint64_t>()->default_value(4096),
       "slow-retrieval floor: a transfer receiving fewer than this many bytes per second over "
       "--min-rate-window is aborted and retried, resuming what arrived (0: no floor)")
      ("min-rate-window", po::value<int>()->default_value(60),
       "seconds over which --min-rate is judged")
      ("once", po::bool_switch(), "bring the tree to the broker's latest serial, then exit")
      ("connect-timeout", po::value<int>()->default_value(60),
       "with --once: give up (exit 1) when the broker has not answered for this many seconds")
      ("check-config", po::bool_switch(),
       "check the configuration (options, key files, tree, state and staging directories), "
       "print the result and exit: 0 valid, 2 not");
  // clang-format on
  options.add(ClientTransportOptions());
  ProgramInfo info{
      "mirrorcast-subscriber",
      "mirrorcast-subscriber --broker HOST:PORT (--trust PUBFILE | --root-key PUBFILE) --repo R "
      "--tree DIR --state DIR --id NAME --curve-key KEYFILE --broker-key PUBFILE [options]",
      "Keeps one mirror tree at the broker's latest serial: verifies each signed event, fetches "
      "only what changed (local reuse, librsync deltas, or whole files), checks every SHA-256 "
      "against the signed manifest, applies content before metadata and deletions last, records "
      "the serial durably and acknowledges it to the broker. Every socket to the broker uses "
      "CURVE; the broker's allow-list must list this key as 'mirror NAME' with NAME = --id "
      "(the only id it may ACK as). SIGHUP reloads the trust keys (--trust, --heartbeat-trust, "
      "--root-key). Under systemd (Type=notify) it reports READY, STATUS, RELOADING and "
      "STOPPING and pets the watchdog while its loop makes progress. Stops cleanly on SIGTERM. "
      "Exit codes: 0 stopped; 1 failed; 2 usage or configuration error (the unit's "
      "RestartPreventExitStatus)."};
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  const auto addresses = (*vm)["broker"].as<std::vector<std::string>>();
  std::vector<HostPort> brokers;
  for (const std::string& address : addresses) {
    auto broker = ParseHostPort(address);
    if (!broker.ok()) throw std::runtime_error("--broker: " + broker.status().message());
    brokers.push_back(*broker);
  }

  SubscriberOptions opts;
  std::vector<ClientTransport> transports =
      ClientTransportsFromOptions(*vm, "mirrorcast-subscriber", brokers.size());
  opts.broker = brokers[0];
  opts.transport = transports[0];
  for (size_t i = 1; i < brokers.size(); ++i) {
    opts.other_brokers.push_back({brokers[i], std::move(transports[i])});
  }
  opts.failover_after = std::chrono::seconds(std::max(1, (*vm)["failover-after"].as<int>()));
  ReadTrustFlags(*vm, &opts.trust, &opts.root_keys);
  opts.heartbeat_trust = PathList(*vm, "heartbeat-trust");
  opts.stale_after = std::chrono::seconds(std::max(1, (*vm)["stale-after"].as<int>()));
  opts.repo = (*vm)["repo"].as<std::string>();
  opts.tree = (*vm)["tree"].as<std::string>();
  opts.state = (*vm)["state"].as<std::string>();
  opts.id = (*vm)["id"].as<std::string>();
  if (vm->count("staging")) opts.staging = (*vm)["staging"].as<std::string>();
  if (vm->count("metadata")) {
    opts.metadata_patterns = (*vm)["metadata"].as<std::vector<std::string>>();
  }
  opts.delta_min_bytes = (*vm)["delta-min-bytes"].as<uint64_t>();
  opts.delete_delay = std::chrono::seconds(std::max(0, (*vm)["delete-delay"].as<int>()));
  if (!(*vm)["no-trace-files"].as<bool>()) {
    if (vm->count("trace-name")) {
      opts.trace_name = (*vm)["trace-name"].as<std::string>();
    } else {
      char host[256] = {};
      if (::gethostname(host, sizeof(host) - 1) == 0) opts.trace_name = host;
    }
    if (!ValidTraceName(opts.trace_name)) {
      throw std::runtime_error("--trace-name '" + EscapeForLog(opts.trace_name) +
                               "' is not a plain file name ([A-Za-z0-9._-], not starting with "
                               "'.'); give one, or --no-trace-files");
    }
  }
  opts.poll_interval = std::chrono::seconds(std::max(1, (*vm)["poll-interval"].as<int>()));
  opts.stall_timeout = std::chrono::seconds(std::max(1, (*vm)["stall-timeout"].as<int>()));
  opts.min_rate_bytes = (*vm)["min-rate"].as<uint64_t>();
  opts.min_rate_window = std::chrono::seconds(std::max(1, (*vm)["min-rate-window"].as<int>()));
  opts.once_connect_timeout = std::chrono::seconds(std::max(0, (*vm)["connect-timeout"].as<int>()));

  if ((*vm)["check-config"].as<bool>()) {
    Subscriber subscriber(std::move(opts));
    return ReportConfigCheck("mirrorcast-subscriber", subscriber.CheckConfig());
  }
  // One subscriber per state directory and per tree: a second one refuses to
  // start instead of interleaving its applies with this one's.
  auto state_lock = LockDirectory(opts.state, "a subscriber's --state");
  if (!state_lock.ok()) throw std::runtime_error(state_lock.status().message());
  auto tree_lock = LockDirectory(opts.tree, "a subscriber's --tree");
  if (!tree_lock.ok()) throw std::runtime_error(tree_lock.status().message());

  InstallStopSignals();
  InstallReloadSignal();
  Subscriber subscriber(std::move(opts));
  if ((*vm)["once"].as<bool>()) {
    if (Status s = subscriber.CheckConfig(); !s.ok())
      return ReportConfigCheck("mirrorcast-subscriber", s);
    auto report = subscriber.SyncOnce();
    if (!report.ok()) {
      std::cerr << "mirrorcast-subscriber: " << report.status().ToString() << "\n";
      return 1;
    }
    std::cout << "repo at serial " << report->serial << " (" << report->applied
              << " serial(s) applied)\n";
    return 0;
  }
  return subscriber.Run();
}

}  // namespace

int main(int argc, char** argv) {
  return mirrorcast::RunMain("mirrorcast-subscriber", SubscriberMain, argc, argv);
}
