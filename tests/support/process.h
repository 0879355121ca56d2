// Real child processes for integration tests: the mirrorcast daemons and
// commands run as separate programs, exactly as an operator would run them.
//
// Every child runs in its own process group with stdin on /dev/null and gets
// PR_SET_PDEATHSIG(SIGKILL), so nothing outlives the test binary even when it
// crashes. Note that the death signal fires when the *thread* that forked the
// child exits, so start children from the test's main thread.
//
// When a child exits, whatever is left in its process group is killed too.
//
// Exit statuses are reported as a shell does: the exit code (0-255) for a
// normal exit, 128 + signal number for a child killed by a signal.
//
// Failures to start a child, a missing MIRRORCAST_BIN_DIR and timeouts throw
// std::runtime_error with a readable message; GoogleTest reports it as a
// failure of the test that called.
//
// Not thread-safe: a ChildProcess belongs to one thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mirrorcast::testing {

// The path of the built program `name` ("mirrorcast-broker") in the directory
// named by the environment variable MIRRORCAST_BIN_DIR (ctest sets it). Throws
// when the variable is unset or the program is not there.
std::filesystem::path BinPath(const std::string& name);

// A child process started with Start(). The destructor kills the child's whole
// process group with SIGKILL (if the child is still unreaped) and reaps it.
class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess();
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Starts argv[0] (a path; no PATH search) with arguments argv[1..]. stdout
  // and stderr are appended to `log_path` (created if missing). Throws if a
  // child is already running here, or if the program cannot be executed.
  void Start(const std::vector<std::string>& argv, const std::filesystem::path& log_path);

  // -1 before Start().
  pid_t pid() const { return pid_; }
  const std::filesystem::path& log_path() const { return log_path_; }

  // True while the child has not exited. Reaps it when it has.
  bool Running();

  // Sends `sig` to the child (not its group). No-op once the child is reaped.
  void Signal(int sig);

  // SIGTERM, then up to `timeout` for a clean exit, then SIGKILL to the whole
  // group. Returns the exit status (see above). Safe to call after the child
  // exited on its own: returns the status it had. -1 if never started.
  int Stop(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Waits up to `timeout` for the child to exit. Returns its exit status, or
  // nullopt if it is still running at the deadline (or was never started).
  std::optional<int> Wait(std::chrono::milliseconds timeout);

 private:
  // One waitpid(WNOHANG); records the status once the child has exited.
  bool Reap();
  void KillAndReap();

  pid_t pid_ = -1;
  std::optional<int> exit_status_;
  std::filesystem::path log_path_;
};

struct RunResult {
  int exit_code = -1;      // exit status (see above); 128 + SIGKILL after a timeout
  bool timed_out = false;  // the child was killed because it ran past the timeout
  std::string out;         // everything written to stdout
  std::string err;         // everything written to stderr
};

// Runs argv to completion with stdout and stderr captured separately.
// Inside a GoogleTest fixture, gtest's own Test::Run() hides this name: call
// it qualified (mirrorcast::testing::Run). A child
// still running after `timeout` is killed (its whole group) and the result has
// timed_out set. Throws if the program cannot be executed.
RunResult Run(const std::vector<std::string>& argv,
              std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Polls `path` every 20 ms until it exists and holds non-blank text that is
// the same on two consecutive reads (so a file still being written is not
// returned half-done); returns that text with surrounding whitespace trimmed.
// Throws after `timeout`. Used to read a broker's --port-file.
std::string WaitForFile(const std::filesystem::path& path,
                        std::chrono::milliseconds timeout = std::chrono::seconds(20));

// A TCP port of 127.0.0.1 that was free a moment ago (bound to port 0, read
// back, closed), for a third-party server that cannot be told to bind port 0
// and report it. Another process may take it first: start the server, and
// pick again if it cannot bind. Throws when no socket can be bound.
uint16_t FreeLoopbackPort();

// The path of the system program `name` in /usr/bin, /usr/sbin, /bin or /sbin
// (Run() and ChildProcess do no PATH search). Throws, telling to run
// deploy/install-deps.sh (which `make test` runs), when it is not installed.
std::string SystemProgram(const std::string& name);

// Asks `done` every 50 ms until it says true or `timeout` has passed;
// returns its last answer (so a test fails with what it waited for).
bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout);

}  // namespace mirrorcast::testing
