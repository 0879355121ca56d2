// A Clock that moves only when the test moves it: expiry, staleness and
// retry tests run without sleeping. Thread-safe (a daemon's loop thread
// reads it while the test thread advances it).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "core/base/clock.h"

namespace mirrorcast::testing {

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t unix_seconds = 1800000000) : unix_(unix_seconds) {}

  int64_t NowUnix() const override { return unix_.load(); }
  std::chrono::steady_clock::time_point Steady() const override {
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(steady_ns_.load()));
  }

  // Moves both the wall and the steady time forward.
  void Advance(std::chrono::seconds by) {
    unix_ += by.count();
    steady_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(by).count();
  }
  void Advance(std::chrono::milliseconds by) {
    steady_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(by).count();
  }

 private:
  std::atomic<int64_t> unix_;
  // Starts well after the epoch so "now - interval" never underflows.
  std::atomic<int64_t> steady_ns_{int64_t{1000000} * 1000000000};
};

}  // namespace mirrorcast::testing
