// SIGTERM / SIGINT handling: the first signal asks the daemon to stop cleanly
// (its loops poll StopRequested() at least every 200 ms); SIGPIPE is ignored.
#pragma once

namespace mirrorcast {

// Installs the handlers. Call once from main() before starting threads.
void InstallStopSignals();
// True once SIGTERM or SIGINT arrived.
bool StopRequested();

}  // namespace mirrorcast
