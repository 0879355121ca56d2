// Always-on checks of our own invariants (never of input: a peer or the disk
// gets a Status). Unlike assert(), MC_CHECK runs in every build type; a
// failure is a bug, so it logs where and what to stderr and aborts, which
// leaves a core dump and makes systemd restart the daemon.
//
//   MC_CHECK(rc == SQLITE_OK, "bind index out of range");
#pragma once

namespace mirrorcast {

[[noreturn]] void CheckFailed(const char* file, int line, const char* condition,
                              const char* message);

}  // namespace mirrorcast

#define MC_CHECK(condition, message)                                        \
  do {                                                                      \
    if (!(condition)) [[unlikely]] {                                        \
      ::mirrorcast::CheckFailed(__FILE__, __LINE__, #condition, (message)); \
    }                                                                       \
  } while (0)
