// SIGTERM / SIGINT handling: the first signal asks the daemon to stop cleanly
// (its loops poll StopRequested() at least every 200 ms); SIGPIPE is ignored.
#pragma once

namespace mirrorcast {

// Installs the handlers. Call once from main() before starting threads.
void InstallStopSignals();
// True once SIGTERM or SIGINT arrived (or RequestStop() was called).
bool StopRequested();
// For in-process tests and for programs that stop themselves.
void RequestStop();
void ResetStopForTesting();

}  // namespace mirrorcast
