// mirrorcast-broker: parses options and runs the Broker library.
#include <iostream>

#include "broker/broker.h"
#include "core/cli/options.h"
#include "core/cli/signals.h"
#include "core/cli/transport.h"
#include "core/fs/lock.h"

namespace po = boost::program_options;

namespace {

int BrokerMain(int argc, char** argv) {
  using namespace mirrorcast;
  po::options_description options("Broker options");
  // clang-format off
  options.add_options()
      ("listen", po::value<std::string>()->required(),
       "HOST:PORT of the control socket (port 0: any free port). Clients are configured with "
       "this one address and learn the events and content ports from it")
      ("state", po::value<std::string>()->required(),
       "state directory: broker.db (event log, mirror table, servable versions), stored "
       "manifests and retained file versions (best on the tree's filesystem)")
      ("tree-root", po::value<std::string>()->required(),
       "directory whose subdirectory R is the content of repo R")
      ("trust", po::value<std::vector<std::string>>()->composing(),
       "fixed keys: public key file of a publisher allowed to publish to any repo "
       "(repeatable). Use --trust or --root-key")
      ("root-key", po::value<std::vector<std::string>>()->composing(),
       "instead of --trust: public key file of the offline root that signs key sets "
       "(repeatable). Publishes are checked against the current key set, which "
       "'mirrorcast keys publish' uploads (verified against the current root, kept in "
       "STATE/keyset) and which the broker hands to every mirror")
      ("port-file", po::value<std::string>(),
       "write HOST:PORT of the control socket here once bound")
      ("events-port", po::value<uint16_t>()->default_value(0),
       "port of the events socket (0: control port + 1, or any free port with --listen ...:0)")
      ("content-port", po::value<uint16_t>()->default_value(0),
       "port of the content socket (0: control port + 2, or any free port with --listen ...:0)")
      ("content-workers", po::value<int>()->default_value(4),
       "threads serving content and computing deltas")
      ("keep-events", po::value<uint64_t>()->default_value(10000),
       "events kept per repo for catch-up; a mirror further behind jumps to the latest manifest")
      ("keep-versions", po::value<uint64_t>()->default_value(4),
       "serials for which a file version replaced or deleted by a publish stays servable, so "
       "mirrors still fetching it finish after the tree has moved on. Kept without copies as "
       "hard links in STATE/objects (reflinks when the state directory is on another "
       "filesystem; without either, only current versions are served). 0: keep none")
      ("broker-id", po::value<std::string>(), "name shown in status (default: hostname)")
      ("heartbeat-key", po::value<std::string>(),
       "secret key file (the origin's online key) used to sign heartbeats: the latest serial "
       "of every repo, so mirrors notice missed events and can prove they are fresh")
      ("heartbeat-interval", po::value<int>()->default_value(10), "seconds between heartbeats")
      ("http", po::value<std::string>(),
       "HOST:PORT for the status page: / (HTML: every repo and mirror, with lag, state, "
       "last seen and a propagation plot), /status.json and /metrics (Prometheus). Read-only "
       "and unauthenticated (it shows mirror names and serials, never keys): bind it to "
       "loopback or a monitoring network. Off by default")
      ("http-port-file", po::value<std::string>(),
       "write the status page's HOST:PORT here once bound (for --http HOST:0)")
      ("silent-after", po::value<int64_t>()->default_value(120),
       "seconds without a poll or ACK after which a mirror shows as silent (subscribers poll "
       "every 30 s by default)")
      ("check-config", po::bool_switch(),
       "check the configuration (options, key files, allow-list, tree root, state directory), "
       "print the result and exit: 0 valid, 2 not");
  // clang-format on
  // What one peer (its CURVE key; one connection with --insecure-plaintext) and
  // all peers together may hold of the broker. Defaults: BrokerOptions'.
  const ContentLimits content_defaults;
  const ControlLimits control_defaults;
  po::options_description relay("Relay mode (a tier-1 mirror serving its region)");
  // clang-format off
  relay.add_options()
      ("upstream", po::value<std::vector<std::string>>()->composing(),
       "HOST:PORT of the broker to follow (the origin or another relay; repeatable: tried in "
       "order, failing over as a subscriber does). The broker then runs as a relay: it "
       "follows every repo of its upstream exactly as a mirror does (the same checks, staging "
       "and crash safety) into TREE-ROOT/REPO, and only once an update is durable there "
       "re-publishes the origin's signed event unchanged and serves it from its own tree and "
       "event log. Publishes are refused. Its --trust/--root-key are the origin's")
      ("upstream-key", po::value<std::vector<std::string>>()->composing(),
       "the upstream's CURVE public key (PREFIX.curve.pub): once for all --upstream or once "
       "per --upstream, in order. The relay connects with its own --curve-key, which the "
       "upstream's allow-list names with role relay")
      ("heartbeat-trust", po::value<std::vector<std::string>>()->composing(),
       "the origin's public heartbeat key (repeatable): heartbeats it signs are passed down "
       "unchanged; without it the region's mirrors cannot prove they are fresh")
      ("upstream-poll", po::value<int>()->default_value(30),
       "seconds between the relay's polls of its upstream (events are pushed; the poll is "
       "the safety net)")
      ("failover-after", po::value<int>()->default_value(30),
       "seconds an upstream may be unreachable or stale before the next --upstream is tried")
      ("stale-after", po::value<int>()->default_value(60),
       "seconds without a valid heartbeat after which the relay reports its upstream stale");
  // clang-format on
  po::options_description limits("Limits a peer cannot get past (over one: a clear refusal)");
  // clang-format off
  limits.add_options()
      ("max-requests-per-peer", po::value<size_t>()->default_value(content_defaults.requests_per_peer),
       "content requests one peer may have in flight (a subscriber keeps 16)")
      ("max-reply-bytes-per-peer",
       po::value<uint64_t>()->default_value(content_defaults.reply_bytes_per_peer),
       "content reply bytes queued for one peer that does not read them; more are dropped")
      ("max-deltas-per-peer", po::value<size_t>()->default_value(content_defaults.deltas_per_peer),
       "delta requests one peer may have in flight")
      ("max-delta-transfers-per-peer",
       po::value<size_t>()->default_value(content_defaults.transfers_per_peer),
       "computed deltas one peer may hold unreleased")
      ("max-delta-scratch-per-peer",
       po::value<uint64_t>()->default_value(content_defaults.scratch_bytes_per_peer),
       "bytes of delta scratch files one peer may hold (a larger delta is refused: the file is "
       "fetched whole)")
      ("max-requests", po::value<size_t>()->default_value(content_defaults.requests),
       "content requests in flight from all peers")
      ("max-request-bytes", po::value<uint64_t>()->default_value(content_defaults.request_bytes),
       "bytes of the content requests in flight from all peers (delta signatures above all)")
      ("max-deltas", po::value<size_t>()->default_value(content_defaults.deltas),
       "delta computations at once (0: half of --content-workers, at least 1)")
      ("max-delta-scratch", po::value<uint64_t>()->default_value(content_defaults.scratch_bytes),
       "bytes of delta scratch files in all (STATE/scratch)")
      ("delta-ttl", po::value<int>()->default_value(static_cast<int>(content_defaults.delta_ttl.count())),
       "seconds after which a computed delta nobody reads is deleted")
      ("control-rate", po::value<double>()->default_value(control_defaults.requests_per_second),
       "control requests a second one peer may send, sustained")
      ("control-burst", po::value<double>()->default_value(control_defaults.burst),
       "control requests one peer may send at once")
      ("control-pending-per-peer",
       po::value<size_t>()->default_value(control_defaults.pending_per_peer),
       "control requests of one peer waiting to be handled")
      ("control-small-request-bytes",
       po::value<size_t>()->default_value(control_defaults.small_request_bytes),
       "largest Hello, Events, Ack, Status or Linked request (Publish and PutObjects: 40 MiB)");
  // clang-format on
  options.add(limits);
  options.add(relay);
  options.add(BrokerTransportOptions());
  ProgramInfo info{
      "mirrorcast-broker",
      "mirrorcast-broker --listen HOST:PORT --state DIR --tree-root DIR --trust PUBFILE "
      "--curve-key KEYFILE --allow FILE [options]   (or --root-key PUBFILE instead of --trust)",
      "Accepts signed repository events from mirrorcast-publish, stores them durably, "
      "fans them out to mirrorcast-subscriber daemons, serves the changed content "
      "(whole files and librsync deltas) and records which mirror holds which serial. "
      "Every socket uses CURVE: only keys on the --allow list connect, each in its role "
      "(publish, mirror, relay, admin). SIGHUP reloads the allow-list and the trust keys "
      "without dropping connections. Under systemd (Type=notify) it reports READY, STATUS, "
      "RELOADING and STOPPING and pets the watchdog while its loop makes progress. Stops "
      "cleanly on SIGTERM. Exit codes: 0 stopped; 1 failed while running or could not start "
      "(e.g. its port is taken); 2 usage or configuration error (the unit's "
      "RestartPreventExitStatus). With --upstream it runs as a relay: a tier-1 mirror that "
      "applies every update to its own tree first, then serves its region."};
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  auto listen = ParseHostPort((*vm)["listen"].as<std::string>());
  if (!listen.ok()) throw std::runtime_error(listen.status().message());

  BrokerOptions opts;
  opts.listen = *listen;
  if (BrokerUsesCurve(*vm)) {
    opts.curve_key = (*vm)["curve-key"].as<std::string>();
    opts.allow_file = (*vm)["allow"].as<std::string>();
    // Checked here too, so a bad key or list is a configuration error (2).
    if (auto key = LoadCurveSecretFile(*opts.curve_key); !key.ok()) {
      throw std::runtime_error("--curve-key: " + key.status().message());
    }
    if (auto list = AllowList::LoadFile(*opts.allow_file); !list.ok()) {
      throw std::runtime_error("--allow: " + list.status().message());
    }
  } else {
    opts.insecure_plaintext = true;
  }
  opts.state_dir = (*vm)["state"].as<std::string>();
  opts.tree_root = (*vm)["tree-root"].as<std::string>();
  ReadTrustFlags(*vm, &opts.trust, &opts.root_keys);
  if (vm->count("port-file")) opts.port_file = (*vm)["port-file"].as<std::string>();
  opts.events_port = (*vm)["events-port"].as<uint16_t>();
  opts.content_port = (*vm)["content-port"].as<uint16_t>();
  opts.content_workers = (*vm)["content-workers"].as<int>();
  opts.keep_events = (*vm)["keep-events"].as<uint64_t>();
  opts.keep_versions = (*vm)["keep-versions"].as<uint64_t>();
  if (vm->count("broker-id")) opts.broker_id = (*vm)["broker-id"].as<std::string>();
  if (vm->count("heartbeat-key")) opts.heartbeat_key = (*vm)["heartbeat-key"].as<std::string>();
  opts.heartbeat_interval =
      std::chrono::seconds(std::max(1, (*vm)["heartbeat-interval"].as<int>()));
  if (vm->count("http")) {
    auto http = ParseHostPort((*vm)["http"].as<std::string>());
    if (!http.ok()) throw std::runtime_error("--http: " + http.status().message());
    opts.http = *http;
  }
  if (vm->count("http-port-file")) opts.http_port_file = (*vm)["http-port-file"].as<std::string>();
  opts.silent_after_seconds = (*vm)["silent-after"].as<int64_t>();
  if (opts.silent_after_seconds < 1) throw std::runtime_error("--silent-after must be at least 1");

  if (vm->count("upstream")) {
    for (const auto& text : (*vm)["upstream"].as<std::vector<std::string>>()) {
      auto upstream = ParseHostPort(text);
      if (!upstream.ok()) throw std::runtime_error("--upstream: " + upstream.status().message());
      opts.upstream.push_back(*upstream);
    }
    // The relay is a client of its upstream with the broker's own key.
    if (opts.curve_key) {
      if (!vm->count("upstream-key")) {
        throw std::runtime_error(
            "--upstream needs --upstream-key FILE (the upstream's CURVE public key)");
      }
      const auto files = (*vm)["upstream-key"].as<std::vector<std::string>>();
      if (files.size() != 1 && files.size() != opts.upstream.size()) {
        throw std::runtime_error(
            "give one --upstream-key for every --upstream, or one per "
            "--upstream in order; got " +
            std::to_string(files.size()));
      }
      auto own = LoadCurveSecretFile(*opts.curve_key);
      if (!own.ok()) throw std::runtime_error("--curve-key: " + own.status().message());
      for (size_t i = 0; i < opts.upstream.size(); ++i) {
        const std::string& file = files[files.size() == 1 ? 0 : i];
        auto key = LoadCurvePublicFile(file);
        if (!key.ok())
          throw std::runtime_error("--upstream-key " + file + ": " + key.status().message());
        opts.upstream_transport.push_back(ClientCurve{*own, *key});
      }
    } else {
      if (vm->count("upstream-key")) {
        throw std::runtime_error("--upstream-key needs CURVE (--curve-key and --allow)");
      }
      opts.upstream_transport.assign(opts.upstream.size(), std::nullopt);
    }
    if (vm->count("heartbeat-trust")) {
      for (const auto& f : (*vm)["heartbeat-trust"].as<std::vector<std::string>>()) {
        opts.heartbeat_trust.emplace_back(f);
      }
    }
    opts.upstream_poll = std::chrono::seconds(std::max(1, (*vm)["upstream-poll"].as<int>()));
    opts.upstream_failover_after =
        std::chrono::seconds(std::max(1, (*vm)["failover-after"].as<int>()));
    opts.upstream_stale_after = std::chrono::seconds(std::max(1, (*vm)["stale-after"].as<int>()));
  } else if (vm->count("upstream-key") || vm->count("heartbeat-trust")) {
    throw std::runtime_error(
        "--upstream-key and --heartbeat-trust belong to relay mode "
        "(--upstream HOST:PORT)");
  }

  ContentLimits& content = opts.content_limits;
  content.requests_per_peer = (*vm)["max-requests-per-peer"].as<size_t>();
  content.reply_bytes_per_peer = (*vm)["max-reply-bytes-per-peer"].as<uint64_t>();
  content.deltas_per_peer = (*vm)["max-deltas-per-peer"].as<size_t>();
  content.transfers_per_peer = (*vm)["max-delta-transfers-per-peer"].as<size_t>();
  content.scratch_bytes_per_peer = (*vm)["max-delta-scratch-per-peer"].as<uint64_t>();
  content.requests = (*vm)["max-requests"].as<size_t>();
  content.request_bytes = (*vm)["max-request-bytes"].as<uint64_t>();
  content.deltas = (*vm)["max-deltas"].as<size_t>();
  content.scratch_bytes = (*vm)["max-delta-scratch"].as<uint64_t>();
  content.delta_ttl = std::chrono::seconds(std::max(1, (*vm)["delta-ttl"].as<int>()));
  ControlLimits& control = opts.control_limits;
  control.requests_per_second = (*vm)["control-rate"].as<double>();
  control.burst = std::max(1.0, (*vm)["control-burst"].as<double>());
  control.pending_per_peer = std::max<size_t>(1, (*vm)["control-pending-per-peer"].as<size_t>());
  control.small_request_bytes = (*vm)["control-small-request-bytes"].as<size_t>();

  if ((*vm)["check-config"].as<bool>()) {
    Broker broker(std::move(opts));
    return ReportConfigCheck("mirrorcast-broker", broker.CheckConfig());
  }
  // One broker per state directory: a second one refuses to start.
  auto state_lock = LockDirectory(opts.state_dir, "the broker's --state");
  if (!state_lock.ok()) throw std::runtime_error(state_lock.status().message());

  InstallStopSignals();
  InstallReloadSignal();
  Broker broker(std::move(opts));
  return broker.Run();
}

}  // namespace

int main(int argc, char** argv) {
  return mirrorcast::RunMain("mirrorcast-broker", BrokerMain, argc, argv);
}
