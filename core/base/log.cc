#include "core/base/log.h"

#include <algorithm>
#include <boost/log/core.hpp>
#include <boost/log/expressions.hpp>
#include <boost/log/support/date_time.hpp>
#include <boost/log/utility/setup/common_attributes.hpp>
#include <boost/log/utility/setup/console.hpp>
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

void InitLogging(std::string_view component, severity_level level) {
  logging::core::get()->remove_all_sinks();
  logging::add_common_attributes();
  const std::string name(component);
  logging::add_console_log(
      std::clog,
      logging::keywords::format = (expr::stream << expr::format_date_time<boost::posix_time::ptime>(
                                                       "TimeStamp", "%Y-%m-%dT%H:%M:%S.%f")
                                                << " " << logging::trivial::severity << " " << name
                                                << ": " << expr::smessage),
      logging::keywords::auto_flush = true);
  logging::core::get()->set_filter(logging::trivial::severity >= level);
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
