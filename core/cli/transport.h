// The transport-security flags every mirrorcast program shares
// (docs/operations.md, "Transport keys"):
//   clients (publish, subscriber, status, recall, verify --repair):
//     --curve-key FILE     this client's CURVE secret key (PREFIX.curve.key)
//     --broker-key FILE    the broker's CURVE public key (PREFIX.curve.pub)
//   the broker:
//     --curve-key FILE     the broker's own CURVE secret key
//     --allow FILE         the allow-list of client keys and roles
//   both:
//     --insecure-plaintext plain TCP without authentication, for a lab
// Without keys and without --insecure-plaintext a program refuses to start
// and says what to pass (exit 2, like every configuration error).
#pragma once

#include <boost/program_options.hpp>
#include <string_view>
#include <vector>

#include "core/net/curve.h"

namespace mirrorcast {

boost::program_options::options_description ClientTransportOptions();
boost::program_options::options_description BrokerTransportOptions();

// The client's transport from the flags above: both keys loaded (refusing
// key files others can write), or nullopt with --insecure-plaintext (after
// a loud warning on stderr). Throws std::runtime_error for neither, half a
// pair, or keys together with --insecure-plaintext; `program` starts the
// message.
ClientTransport ClientTransportFromOptions(const boost::program_options::variables_map& vm,
                                           std::string_view program);

// The same for a client of `brokers` brokers (a subscriber's repeated
// --broker): --broker-key given once (one key for all) or once per broker.
std::vector<ClientTransport> ClientTransportsFromOptions(
    const boost::program_options::variables_map& vm, std::string_view program, size_t brokers);

// Checks the broker's flags the same way (the broker loads the files
// itself); true for CURVE, false for --insecure-plaintext.
bool BrokerUsesCurve(const boost::program_options::variables_map& vm);

}  // namespace mirrorcast
