// Wall and monotonic time behind a small interface so tests can inject time.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mirrorcast {

class Clock {
 public:
  virtual ~Clock() = default;
  // Seconds since the Unix epoch (for signed expiries and ACK times).
  virtual int64_t NowUnix() const = 0;
  virtual std::chrono::steady_clock::time_point Steady() const = 0;
  // Milliseconds since the Unix epoch (propagation times); a clock that
  // only knows seconds gives NowUnix() * 1000.
  virtual int64_t NowUnixMillis() const { return NowUnix() * 1000; }

  // The process-wide real clock. Thread-safe; never destroyed.
  static const Clock& Real();
};

// `unix_seconds` as UTC, "2026-12-02T05:03:05Z" ("?" when out of range).
std::string FormatUtc(int64_t unix_seconds);

}  // namespace mirrorcast
