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

// `line` as one log line: valid UTF-8 kept as it is (paths stay readable),
// control characters and bytes that are not valid UTF-8 as \xNN, so no
// message can split or garble a line. Applied by the sink to every message.
std::string SanitizeLogLine(std::string_view line);

// True when stderr is the journal's stream (systemd sets JOURNAL_STREAM to
// the "DEV:INODE" of the stream it connected to stderr).
bool StderrIsJournal();

// Installs the stderr sink: "2026-11-25T23:59:01.123456Z info broker: message"
// (UTC). When stderr is the journal, every line starts with its syslog
// priority ("<6>" for info, "<4>" for warning, ...), so journald sorts it.
void InitLogging(std::string_view component, boost::log::trivial::severity_level level);

// The same sink on `out`, with or without the priority prefix (for tests).
void InitLoggingTo(std::ostream& out, std::string_view component,
                   boost::log::trivial::severity_level level, bool journal_priority);

}  // namespace mirrorcast

#define MC_LOG(level) BOOST_LOG_TRIVIAL(level)
