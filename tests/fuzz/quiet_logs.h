// Silences the expected noise of libraries under fuzzing: protobuf logs every
// refused string field, and librsync traces every refusal (at debug level, to
// our log). Printing those lines would cost more than the code under test and
// bury real findings. Call at the top of a fuzz entry point; cheap after the
// first call. Errors and warnings of our own code still print.
#pragma once

#include <google/protobuf/stubs/logging.h>

#include <boost/log/core.hpp>
#include <boost/log/expressions.hpp>
#include <boost/log/trivial.hpp>

namespace mirrorcast::fuzz {

inline void QuietLibraryLogs() {
  static const bool done = [] {
    google::protobuf::SetLogHandler(nullptr);
    boost::log::core::get()->set_filter(boost::log::trivial::severity >= boost::log::trivial::info);
    return true;
  }();
  (void)done;
}

}  // namespace mirrorcast::fuzz
