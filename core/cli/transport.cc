#include "core/cli/transport.h"

#include <initializer_list>
#include <iostream>
#include <stdexcept>
#include <string>

namespace po = boost::program_options;

namespace mirrorcast {
namespace {

constexpr const char* kPlaintextHelp =
    "use plain TCP without CURVE: no encryption, no authentication, no roles. For a lab "
    "only; a loud warning is logged at start and shown by 'mirrorcast status'";

// Whether --insecure-plaintext was given; refused together with any of
// `key_flags` (keys and plain TCP contradict each other).
bool PlaintextChosen(const po::variables_map& vm, std::initializer_list<const char*> key_flags) {
  const bool plaintext = vm.count("insecure-plaintext") && vm["insecure-plaintext"].as<bool>();
  if (!plaintext) return false;
  for (const char* flag : key_flags) {
    if (vm.count(flag)) {
      throw std::runtime_error(std::string("--insecure-plaintext cannot be combined with --") +
                               flag);
    }
  }
  return true;
}

}  // namespace

po::options_description ClientTransportOptions() {
  po::options_description out("Transport security (CURVE)");
  // clang-format off
  out.add_options()
      ("curve-key", po::value<std::string>(),
       "this client's CURVE secret key file (PREFIX.curve.key from 'mirrorcast keygen --curve', "
       "mode 0600); its public half must be on the broker's --allow list in a role that may do "
       "what this program does")
      ("broker-key", po::value<std::vector<std::string>>()->composing(),
       "the broker's CURVE public key file (the broker's PREFIX.curve.pub): the client talks "
       "only to the holder of its secret. A subscriber with several --broker takes one for all "
       "or one per --broker, in the same order")
      ("insecure-plaintext", po::bool_switch(), kPlaintextHelp);
  // clang-format on
  return out;
}

po::options_description BrokerTransportOptions() {
  po::options_description out("Transport security (CURVE)");
  // clang-format off
  out.add_options()
      ("curve-key", po::value<std::string>(),
       "the broker's CURVE secret key file (PREFIX.curve.key from 'mirrorcast keygen --curve', "
       "mode 0600); give its PREFIX.curve.pub to every client as --broker-key")
      ("allow", po::value<std::string>(),
       "allow-list: one 'ROLE NAME PUBLIC-KEY-FILE-OR-Z85' per line (roles publish, mirror, "
       "relay, admin; '#' comment lines). Only keys listed may connect; a mirror may ACK only as "
       "its NAME. Reloaded on SIGHUP without dropping connections")
      ("insecure-plaintext", po::bool_switch(), kPlaintextHelp);
  // clang-format on
  return out;
}

std::vector<ClientTransport> ClientTransportsFromOptions(const po::variables_map& vm,
                                                         std::string_view program, size_t brokers) {
  if (PlaintextChosen(vm, {"curve-key", "broker-key"})) {
    std::cerr << program
              << ": warning: INSECURE: --insecure-plaintext: talking to the broker over plain "
                 "TCP without encryption or authentication (a lab only)\n";
    return std::vector<ClientTransport>(brokers, std::nullopt);
  }
  if (!vm.count("curve-key") || !vm.count("broker-key")) {
    throw std::runtime_error(
        "no transport security: pass --curve-key FILE (this client's secret key) and "
        "--broker-key FILE (the broker's public key), made with 'mirrorcast keygen --curve', or "
        "--insecure-plaintext for a lab broker without CURVE");
  }
  const auto files = vm["broker-key"].as<std::vector<std::string>>();
  if (files.size() != 1 && files.size() != brokers) {
    throw std::runtime_error("give one --broker-key for every broker, or " +
                             std::to_string(brokers) + " (one per --broker, in order); got " +
                             std::to_string(files.size()));
  }
  auto keys = LoadCurveSecretFile(vm["curve-key"].as<std::string>());
  if (!keys.ok()) throw std::runtime_error("--curve-key: " + keys.status().message());
  std::vector<ClientTransport> out;
  for (size_t i = 0; i < brokers; ++i) {
    const std::string& file = files[files.size() == 1 ? 0 : i];
    auto broker_key = LoadCurvePublicFile(file);
    if (!broker_key.ok()) {
      throw std::runtime_error("--broker-key " + file + ": " + broker_key.status().message());
    }
    out.push_back(ClientCurve{*keys, std::move(*broker_key)});
  }
  return out;
}

ClientTransport ClientTransportFromOptions(const po::variables_map& vm, std::string_view program) {
  return ClientTransportsFromOptions(vm, program, 1).front();
}

bool BrokerUsesCurve(const po::variables_map& vm) {
  if (PlaintextChosen(vm, {"curve-key", "allow"})) return false;
  if (!vm.count("curve-key") || !vm.count("allow")) {
    throw std::runtime_error(
        "no transport security: pass --curve-key FILE (the broker's secret key, from "
        "'mirrorcast keygen --curve') and --allow FILE (the allow-list of client keys), or "
        "--insecure-plaintext for a lab");
  }
  return true;
}

}  // namespace mirrorcast
