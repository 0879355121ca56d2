#include "tests/support/process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

namespace mirrorcast::testing {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

std::string ErrnoText(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// Shell-style exit status from a waitpid() status.
int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Moves `fd` above 0..2 so dup2() onto the standard descriptors in the child
// can never clobber another descriptor it still needs (the test binary may
// run with a standard descriptor closed).
int AboveStdio(int fd) {
  if (fd > 2) return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int err = errno;
  ::close(fd);
  if (moved < 0) throw std::runtime_error(ErrnoText("fcntl(F_DUPFD_CLOEXEC)", err));
  return moved;
}

void CloseIfOpen(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// fork + execv with stdin=/dev/null, stdout=out_fd, stderr=err_fd, in a new
// process group, with PR_SET_PDEATHSIG(SIGKILL) and every other descriptor
// closed. Throws when the program cannot be executed (the child reports
// execv's errno through a close-on-exec pipe, so a successful exec is seen as
// EOF). Everything the child does between fork and exec is async-signal-safe:
// the test binary may have other threads.
pid_t Spawn(const std::vector<std::string>& argv, int out_fd, int err_fd) {
  if (argv.empty()) throw std::runtime_error("Spawn: empty argv");
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  int dev_null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (dev_null < 0) throw std::runtime_error(ErrnoText("open /dev/null", errno));
  dev_null = AboveStdio(dev_null);
  int exec_pipe[2];
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(dev_null);
    throw std::runtime_error(ErrnoText("pipe2", err));
  }
  exec_pipe[0] = AboveStdio(exec_pipe[0]);
  exec_pipe[1] = AboveStdio(exec_pipe[1]);

  struct rlimit nofile {};
  unsigned max_fd = 65536;
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    max_fd = static_cast<unsigned>(std::min<rlim_t>(nofile.rlim_cur, 1u << 20));
  }
  sigset_t no_signals;
  sigemptyset(&no_signals);
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(dev_null);
    ::close(exec_pipe[0]);
    ::close(exec_pipe[1]);
    throw std::runtime_error(ErrnoText("fork", err));
  }
  if (pid == 0) {
    const int report = exec_pipe[1];
    auto fail = [report](int err) {
      ssize_t ignored = ::write(report, &err, sizeof err);
      (void)ignored;
      ::_exit(127);
    };
    if (::setpgid(0, 0) != 0) fail(errno);
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(errno);
    // The parent may have died between fork() and prctl().
    if (::getppid() != parent) ::_exit(127);
    // Ignored signals and the signal mask survive exec; start clean.
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &default_action, nullptr);
    }
    ::sigprocmask(SIG_SETMASK, &no_signals, nullptr);
    if (::dup2(dev_null, STDIN_FILENO) < 0) fail(errno);
    if (::dup2(out_fd, STDOUT_FILENO) < 0) fail(errno);
    if (::dup2(err_fd, STDERR_FILENO) < 0) fail(errno);
    // No inherited sockets or files: a daemon must not keep the test's
    // listening sockets or other children's pipes open.
    // close_range (Linux 5.9) is one call; the loop is the fallback.
    const unsigned keep = static_cast<unsigned>(report);
    if ((keep > 3 && ::close_range(3, keep - 1, 0) != 0) || ::close_range(keep + 1, ~0u, 0) != 0) {
      for (unsigned fd = 3; fd < max_fd; ++fd) {
        if (fd != keep) ::close(static_cast<int>(fd));
      }
    }
    ::execv(cargv[0], cargv.data());
    fail(errno);
  }

  ::close(dev_null);
  ::close(exec_pipe[1]);
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(exec_pipe[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  ::close(exec_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof child_errno)) {
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    throw std::runtime_error(ErrnoText("cannot execute " + argv[0], child_errno));
  }
  return pid;
}

std::string Trim(const std::string& s) {
  const char* ws = " \t\r\n";
  size_t begin = s.find_first_not_of(ws);
  if (begin == std::string::npos) return "";
  size_t end = s.find_last_not_of(ws);
  return s.substr(begin, end - begin + 1);
}

}  // namespace

fs::path BinPath(const std::string& name) {
  const char* dir = std::getenv("MIRRORCAST_BIN_DIR");
  if (dir == nullptr || *dir == '\0') {
    throw std::runtime_error(
        "MIRRORCAST_BIN_DIR is not set: run the integration tests through ctest, which points "
        "it at BUILD_DIR/bin (or set it by hand)");
  }
  fs::path path = fs::path(dir) / name;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw std::runtime_error(path.string() + " does not exist: build the program first");
  }
  return path;
}

// ---------------------------------------------------------------------------
// ChildProcess
// ---------------------------------------------------------------------------

ChildProcess::~ChildProcess() { KillAndReap(); }

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      exit_status_(std::exchange(other.exit_status_, std::nullopt)),
      log_path_(std::move(other.log_path_)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    KillAndReap();
    pid_ = std::exchange(other.pid_, -1);
    exit_status_ = std::exchange(other.exit_status_, std::nullopt);
    log_path_ = std::move(other.log_path_);
  }
  return *this;
}

void ChildProcess::Start(const std::vector<std::string>& argv, const fs::path& log_path) {
  if (pid_ > 0 && !exit_status_ && !Reap()) {
    throw std::runtime_error("ChildProcess::Start: pid " + std::to_string(pid_) +
                             " is still running");
  }
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw std::runtime_error(ErrnoText("open " + log_path.string(), errno));
  log_fd = AboveStdio(log_fd);
  pid_t pid;
  try {
    pid = Spawn(argv, log_fd, log_fd);
  } catch (...) {
    ::close(log_fd);
    throw;
  }
  ::close(log_fd);
  pid_ = pid;
  exit_status_.reset();
  log_path_ = log_path;
}

bool ChildProcess::Reap() {
  if (exit_status_) return true;
  if (pid_ <= 0) return false;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  // r < 0 (ECHILD) means someone else reaped it: the child is gone either way.
  exit_status_ = r == pid_ ? DecodeWaitStatus(status) : -1;
  // Whatever the child left behind in its group goes with it.
  ::kill(-pid_, SIGKILL);
  return true;
}

bool ChildProcess::Running() { return pid_ > 0 && !Reap(); }

void ChildProcess::Signal(int sig) {
  if (pid_ > 0 && !Reap()) ::kill(pid_, sig);
}

std::optional<int> ChildProcess::Wait(milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  while (!Reap()) {
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return exit_status_;
}

int ChildProcess::Stop(milliseconds timeout) {
  if (pid_ <= 0) return -1;
  if (Reap()) return *exit_status_;
  ::kill(pid_, SIGTERM);
  if (std::optional<int> status = Wait(timeout)) return *status;
  ::kill(-pid_, SIGKILL);
  ::kill(pid_, SIGKILL);
  if (std::optional<int> status = Wait(std::chrono::seconds(10))) return *status;
  throw std::runtime_error("pid " + std::to_string(pid_) + " survived SIGKILL for 10 s");
}

void ChildProcess::KillAndReap() {
  if (pid_ <= 0 || exit_status_) return;
  if (Reap()) return;
  ::kill(-pid_, SIGKILL);
  ::kill(pid_, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  exit_status_ = r == pid_ ? DecodeWaitStatus(status) : -1;
}

// ---------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------

RunResult Run(const std::vector<std::string>& argv, milliseconds timeout) {
  int out_pipe[2] = {-1, -1};
  int err_pipe[2] = {-1, -1};
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw std::runtime_error(ErrnoText("pipe2", errno));
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw std::runtime_error(ErrnoText("pipe2", err));
  }
  for (int* fd : {&out_pipe[0], &out_pipe[1], &err_pipe[0], &err_pipe[1]}) *fd = AboveStdio(*fd);

  pid_t pid;
  try {
    pid = Spawn(argv, out_pipe[1], err_pipe[1]);
  } catch (...) {
    for (int* fd : {&out_pipe[0], &out_pipe[1], &err_pipe[0], &err_pipe[1]}) CloseIfOpen(*fd);
    throw;
  }
  CloseIfOpen(out_pipe[1]);
  CloseIfOpen(err_pipe[1]);
  ::fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
  ::fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);

  RunResult result;
  // Reads what is available now; closes the descriptor at EOF.
  auto drain = [](int& fd, std::string& into) {
    char buf[65536];
    while (fd >= 0) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        into.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        CloseIfOpen(fd);
      } else if (errno == EINTR) {
        continue;
      } else {
        if (errno != EAGAIN) CloseIfOpen(fd);
        break;
      }
    }
  };

  const auto deadline = Clock::now() + timeout;
  int status = 0;
  bool exited = false;
  while (true) {
    struct pollfd fds[2];
    nfds_t n = 0;
    for (int fd : {out_pipe[0], err_pipe[0]}) {
      if (fd >= 0) fds[n++] = {fd, POLLIN, 0};
    }
    if (n > 0) {
      ::poll(fds, n, 20);
    } else {
      std::this_thread::sleep_for(milliseconds(10));
    }
    drain(out_pipe[0], result.out);
    drain(err_pipe[0], result.err);

    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      exited = true;
      ::kill(-pid, SIGKILL);  // leftovers in its group
      // Everything the child wrote is in the pipes now. A grandchild holding
      // them open does not keep us waiting for EOF.
      drain(out_pipe[0], result.out);
      drain(err_pipe[0], result.err);
      break;
    }
    if (Clock::now() >= deadline) {
      result.timed_out = true;
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      break;
    }
  }
  if (!exited) {
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    drain(out_pipe[0], result.out);
    drain(err_pipe[0], result.err);
  }
  CloseIfOpen(out_pipe[0]);
  CloseIfOpen(err_pipe[0]);
  result.exit_code = DecodeWaitStatus(status);
  return result;
}

// ---------------------------------------------------------------------------
// WaitForFile
// ---------------------------------------------------------------------------

std::string WaitForFile(const fs::path& path, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string previous;
  while (true) {
    std::string current;
    {
      std::ifstream in(path, std::ios::binary);
      if (in) {
        std::ostringstream ss;
        ss << in.rdbuf();
        current = Trim(ss.str());
      }
    }
    if (!current.empty() && current == previous) return current;
    previous = std::move(current);
    if (Clock::now() >= deadline) {
      throw std::runtime_error(
          "timed out after " + std::to_string(timeout.count()) + " ms waiting for " +
          path.string() +
          (previous.empty() ? " to appear" : " to settle (last: '" + previous + "')"));
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
}

uint16_t FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(ErrnoText("socket", errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(ErrnoText("bind 127.0.0.1:0", err));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string SystemProgram(const std::string& name) {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin"}) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  throw std::runtime_error(name +
                           " is not installed: run deploy/install-deps.sh (make test runs it)");
}

bool WaitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

}  // namespace mirrorcast::testing
