// systemd service integration (sd_notify(3), from libsystemd): READY, STATUS,
// RELOADING, STOPPING and the watchdog of a Type=notify unit. Thread-safe.
//
// Without NOTIFY_SOCKET in the environment (not started by systemd, or not
// as Type=notify) every call does nothing, so the daemons call it always.
//
// The watchdog is petted only while the daemon's work loop makes progress:
// the loop calls Progress() on every turn (and long work calls it between
// steps); Tick(), from the main thread, pets systemd's watchdog when the last
// progress is recent (within half of WatchdogSec). A loop that hangs stops
// the petting and systemd restarts the service; a main thread that merely
// sleeps cannot hide it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

namespace mirrorcast {

class ServiceNotifier {
 public:
  // Reads NOTIFY_SOCKET and WATCHDOG_USEC (sd_watchdog_enabled).
  ServiceNotifier();

  // Start-up is done: READY=1 with a STATUS line.
  void Ready(std::string_view status);
  // STATUS=..., sent only when it differs from the last one.
  void SetStatus(std::string_view status);
  // A reload begins (RELOADING=1 with MONOTONIC_USEC); Ready() ends it.
  void Reloading();
  // STOPPING=1.
  void Stopping();

  // The work loop is alive (any thread).
  void Progress();
  // Pets the watchdog when it is enabled and Progress() was called within
  // half of its interval; at most once every quarter interval.
  void Tick();

  bool notifying() const { return notifying_; }
  // 0 when systemd set no watchdog.
  std::chrono::microseconds watchdog_interval() const { return watchdog_; }

 private:
  void Send(const std::string& text);

  std::mutex mu_;  // last_status_, last_pet_: any thread may call
  bool notifying_ = false;
  std::chrono::microseconds watchdog_{0};
  std::string last_status_;
  std::atomic<int64_t> progress_ns_;
  std::chrono::steady_clock::time_point last_pet_{};
};

// The text for a STATUS= or log line: newlines and control bytes become
// spaces, at most 200 bytes.
std::string ServiceStatusText(std::string_view text);

}  // namespace mirrorcast
