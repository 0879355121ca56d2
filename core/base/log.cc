#include "core/base/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/date_time/posix_time/posix_time.hpp>
#include <boost/log/attributes/clock.hpp>
#include <boost/log/core.hpp>
#include <boost/log/expressions.hpp>
#include <boost/log/support/date_time.hpp>
#include <boost/log/utility/setup/common_attributes.hpp>
#include <boost/log/utility/setup/console.hpp>
#include <cstdlib>
#include <iostream>

namespace mirrorcast {

namespace logging = boost::log;
namespace expr = boost::log::expressions;
using boost::log::trivial::severity_level;

Result<severity_level> ParseLogLevel(std::string_view name) {
  if (name == "trace") return severity_level::trace;
  if (name == "debug") return severity_level::debug;
  if (name == "info") return severity_level::info;
  if (name == "warning" || name == "warn") return severity_level::warning;
  if (name == "error") return severity_level::error;
  if (name == "fatal") return severity_level::fatal;
  return Status::InvalidArgument("unknown log level '" + std::string(name) +
                                 "' (trace, debug, info, warning, error, fatal)");
}

namespace {

// syslog(3) priorities, as journald reads them from a "<N>" prefix.
int SyslogPriority(severity_level level) {
  switch (level) {
    case severity_level::trace:
    case severity_level::debug:
      return 7;
    case severity_level::info:
      return 6;
    case severity_level::warning:
      return 4;
    case severity_level::error:
      return 3;
    case severity_level::fatal:
      return 2;
  }
  return 6;
}

// Length of the valid UTF-8 sequence at the start of `s`, or 0.
size_t Utf8Length(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // bounds of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;  // no overlong forms
    if (c == 0xed) hi = 0x9f;  // no surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if (b(i) < 0x80 || b(i) > 0xbf) return 0;
  }
  return n;
}

}  // namespace

std::string SanitizeLogLine(std::string_view line) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(line.size());
  for (size_t i = 0; i < line.size();) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (const size_t n = Utf8Length(line.substr(i)); n > 0) {
        out.append(line.substr(i, n));
        i += n;
        continue;
      }
    }
    out += "\\x";
    out += kHex[c >> 4];
    out += kHex[c & 0xf];
    ++i;
  }
  return out;
}

bool StderrIsJournal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  const std::string expected = std::to_string(static_cast<unsigned long long>(st.st_dev)) + ":" +
                               std::to_string(static_cast<unsigned long long>(st.st_ino));
  return expected == stream;
}

void InitLoggingTo(std::ostream& out, std::string_view component, severity_level level,
                   bool journal_priority) {
  logging::core::get()->remove_all_sinks();
  logging::add_common_attributes();
  // add_common_attributes() stamps local time; every line is in UTC instead.
  auto attributes = logging::core::get()->get_global_attributes();
  attributes.erase("TimeStamp");
  attributes.insert("TimeStamp", logging::attributes::utc_clock());
  logging::core::get()->set_global_attributes(attributes);
  const std::string name(component);
  auto sink = logging::add_console_log(out, logging::keywords::auto_flush = true);
  sink->set_formatter(
      [name, journal_priority](const logging::record_view& rec, logging::formatting_ostream& strm) {
        const auto severity = logging::extract<severity_level>("Severity", rec);
        const severity_level sev = severity ? *severity : severity_level::info;
        if (journal_priority) strm << '<' << SyslogPriority(sev) << '>';
        if (const auto ts = logging::extract<boost::posix_time::ptime>("TimeStamp", rec)) {
          strm << boost::posix_time::to_iso_extended_string(*ts) << 'Z';
        }
        const auto message = rec[expr::smessage];
        strm << ' ' << sev << ' ' << name << ": "
             << SanitizeLogLine(message ? std::string_view(*message) : std::string_view());
      });
  logging::core::get()->set_filter(logging::trivial::severity >= level);
}

void InitLogging(std::string_view component, severity_level level) {
  InitLoggingTo(std::clog, component, level, StderrIsJournal());
}

std::string EscapeForLog(std::string_view text, size_t max_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const size_t n = std::min(text.size(), max_bytes);
  out.reserve(n + 8);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  if (text.size() > max_bytes) out += "...";
  return out;
}

}  // namespace mirrorcast
