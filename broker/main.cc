// mirrorcast-broker: parses options and runs the Broker library.
#include <iostream>

#include "broker/broker.h"
#include "core/cli/options.h"
#include "core/cli/signals.h"

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
      ("trust", po::value<std::vector<std::string>>()->required()->composing(),
       "public key file of a publisher allowed to publish (repeatable)")
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
      ("heartbeat-interval", po::value<int>()->default_value(10), "seconds between heartbeats");
  // clang-format on
  ProgramInfo info{
      "mirrorcast-broker",
      "mirrorcast-broker --listen HOST:PORT --state DIR --tree-root DIR --trust PUBFILE "
      "[options]",
      "Accepts signed repository events from mirrorcast-publish, stores them durably, "
      "fans them out to mirrorcast-subscriber daemons, serves the changed content "
      "(whole files and librsync deltas) and records which mirror holds which serial. "
      "Stops cleanly on SIGTERM."};
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  auto listen = ParseHostPort((*vm)["listen"].as<std::string>());
  if (!listen.ok()) throw std::runtime_error(listen.status().message());

  BrokerOptions opts;
  opts.listen = *listen;
  opts.state_dir = (*vm)["state"].as<std::string>();
  opts.tree_root = (*vm)["tree-root"].as<std::string>();
  for (const auto& t : (*vm)["trust"].as<std::vector<std::string>>()) opts.trust.emplace_back(t);
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

  InstallStopSignals();
  Broker broker(std::move(opts));
  return broker.Run();
}

}  // namespace

int main(int argc, char** argv) {
  return mirrorcast::RunMain("mirrorcast-broker", BrokerMain, argc, argv);
}
