// SIGTERM / SIGINT / SIGHUP handling: the first signal asks the daemon to stop cleanly
// (its loops poll StopRequested() at least every 200 ms); SIGPIPE is ignored.
#pragma once

namespace mirrorcast {

// Installs the handlers. Call once from main() before starting threads.
void InstallStopSignals();
// True once SIGTERM or SIGINT arrived.
bool StopRequested();

// SIGHUP asks a daemon to reload its configuration files (the broker: its
// allow-list) instead of ending it. Call once from main() before starting
// threads, in daemons that reload only.
void InstallReloadSignal();
// True once per SIGHUP (or several that arrived together) since the last call.
bool ReloadRequested();

}  // namespace mirrorcast
