#include "core/cli/service.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdlib>

#include "core/base/log.h"

namespace mirrorcast {
namespace {

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string ServiceStatusText(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 200)) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  return out;
}

ServiceNotifier::ServiceNotifier() : progress_ns_(SteadyNanos()) {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  notifying_ = socket != nullptr && *socket != '\0';
  uint64_t usec = 0;
  if (notifying_ && sd_watchdog_enabled(/*unset_environment=*/0, &usec) > 0 && usec > 0) {
    watchdog_ = std::chrono::microseconds(usec);
  }
}

void ServiceNotifier::Send(const std::string& text) {
  if (!notifying_) return;
  const int r = sd_notify(/*unset_environment=*/0, text.c_str());
  if (r < 0) {
    static std::atomic<bool> said{false};
    if (!said.exchange(true)) {
      MC_LOG(warning) << "cannot notify systemd (NOTIFY_SOCKET): error " << -r;
    }
  }
}

void ServiceNotifier::Ready(std::string_view status) {
  std::lock_guard lock(mu_);
  last_status_ = ServiceStatusText(status);
  Send("READY=1\nSTATUS=" + last_status_);
}

void ServiceNotifier::SetStatus(std::string_view status) {
  std::string text = ServiceStatusText(status);
  std::lock_guard lock(mu_);
  if (text == last_status_) return;
  last_status_ = std::move(text);
  Send("STATUS=" + last_status_);
}

void ServiceNotifier::Reloading() {
  struct timespec now {};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t usec =
      static_cast<uint64_t>(now.tv_sec) * 1000000u + static_cast<uint64_t>(now.tv_nsec) / 1000u;
  std::lock_guard lock(mu_);
  last_status_ = "reloading";
  Send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\nSTATUS=reloading");
}

void ServiceNotifier::Stopping() {
  std::lock_guard lock(mu_);
  last_status_ = "stopping";
  Send("STOPPING=1\nSTATUS=stopping");
}

void ServiceNotifier::Progress() { progress_ns_.store(SteadyNanos(), std::memory_order_relaxed); }

void ServiceNotifier::Tick() {
  if (watchdog_.count() == 0) return;
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mu_);
  if (now - last_pet_ < watchdog_ / 4) return;
  const auto since = std::chrono::nanoseconds(SteadyNanos() - progress_ns_.load());
  if (since > watchdog_ / 2) return;  // the loop is stuck: let systemd see it
  last_pet_ = now;
  Send("WATCHDOG=1");
}

}  // namespace mirrorcast
