// Logging through Boost.Log: one line per event, with the component and
// key=value context, to stderr (journald picks it up under systemd).
//
//   MC_LOG(info) << "applied repo=" << repo << " serial=" << serial;
//
// Thread-safe. InitLogging() is called once by each main() before any thread
// starts; without it, Boost.Log's default sink prints everything.
#pragma once

#include <boost/log/trivial.hpp>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

// Levels accepted by --log-level: trace, debug, info, warning, error, fatal.
Result<boost::log::trivial::severity_level> ParseLogLevel(std::string_view name);

// `text` made safe for a log line or an error reply: printable ASCII kept,
// anything else (and '\\') as \xNN, cut at `max_bytes` input bytes (then
// "..."). Everything a peer sends passes here before it is logged.
std::string EscapeForLog(std::string_view text, size_t max_bytes = 256);

// Installs the stderr sink: "2026-11-25T23:59:01.123Z info broker: message".
void InitLogging(std::string_view component, boost::log::trivial::severity_level level);

}  // namespace mirrorcast

#define MC_LOG(level) BOOST_LOG_TRIVIAL(level)
