#include "core/cli/signals.h"

#include <atomic>
#include <csignal>

namespace mirrorcast {
namespace {

std::atomic<bool> g_stop{false};

std::atomic<bool> g_reload{false};

extern "C" void HandleStopSignal(int) { g_stop.store(true); }
extern "C" void HandleReloadSignal(int) { g_reload.store(true); }

}  // namespace

void InstallStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = HandleStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR and loops re-check
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

bool StopRequested() { return g_stop.load(); }

void InstallReloadSignal() {
  struct sigaction sa {};
  sa.sa_handler = HandleReloadSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGHUP, &sa, nullptr);
}

bool ReloadRequested() { return g_reload.exchange(false); }

}  // namespace mirrorcast
