// mirrorcast-test-reader: a stand-in for a web client (dnf, apt) reading a
// mirror while the subscriber applies updates to it.
//
//   mirrorcast-test-reader --tree DIR --metadata REL [--out FILE]
//
// Until SIGTERM or SIGINT it loops: reads DIR/REL in one go, takes every line
// of the form "<sha256hex> <relative path>" (other lines are ignored) and
// checks that DIR/<path> exists, is a regular file and has that SHA-256, as a
// client downloading the files the index names would. A missing or wrong file
// is a failed read; so is an empty metadata file (no client could parse it).
// A metadata file that does not exist yet is not a failure: it is counted as
// "no metadata yet".
//
// On exit it prints one line to stdout (and to FILE when --out is given):
//   reads=N files=M failed=F no_metadata=K
// N counts metadata reads, M the files checked, F the failed file checks (plus
// empty metadata reads). The first 20 failures are described on stderr. Exit
// status: 0 when F is 0, 1 otherwise, 2 for a usage error.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>

#include "core/crypto/sha256.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;

volatile std::sig_atomic_t g_stop = 0;

void OnSignal(int) { g_stop = 1; }

constexpr uint64_t kFailuresLogged = 20;

struct Counters {
  uint64_t reads = 0;
  uint64_t files = 0;
  uint64_t failed = 0;
  uint64_t no_metadata = 0;
};

enum class ReadOutcome { kOk, kMissing, kError };

// The whole file as one snapshot: the descriptor pins one inode, so a rename
// over the path while we read cannot mix two versions.
ReadOutcome ReadWhole(const fs::path& path, std::string* out, std::string* error) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return ReadOutcome::kMissing;
    *error = std::string("open: ") + std::strerror(errno);
    return ReadOutcome::kError;
  }
  out->clear();
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      *error = std::string("read: ") + std::strerror(errno);
      ::close(fd);
      return ReadOutcome::kError;
    }
    out->append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return ReadOutcome::kOk;
}

bool IsLowerHex(std::string_view s) {
  for (char ch : s) {
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
  }
  return true;
}

class Reader {
 public:
  Reader(fs::path tree, std::string metadata)
      : tree_(std::move(tree)), metadata_(std::move(metadata)) {}

  // One client visit: the index, then every file it names.
  void Iterate() {
    std::string text;
    std::string error;
    switch (ReadWhole(tree_ / metadata_, &text, &error)) {
      case ReadOutcome::kMissing:
        ++counters_.no_metadata;
        return;
      case ReadOutcome::kError:
        ++counters_.reads;
        Fail(metadata_, error);
        return;
      case ReadOutcome::kOk:
        break;
    }
    ++counters_.reads;
    if (text.empty()) {
      Fail(metadata_, "metadata file is empty");
      return;
    }
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line) && !g_stop) {
      if (line.size() < 66 || line[64] != ' ') continue;
      const std::string_view hex(line.data(), 64);
      if (!IsLowerHex(hex)) continue;
      CheckFile(line.substr(65), std::string(hex));
    }
  }

  const Counters& counters() const { return counters_; }

 private:
  void CheckFile(const std::string& rel, const std::string& hex) {
    ++counters_.files;
    const fs::path path = tree_ / rel;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      Fail(rel, std::string("stat: ") + std::strerror(errno));
      return;
    }
    if (!S_ISREG(st.st_mode)) {
      Fail(rel, "not a regular file");
      return;
    }
    auto sha = Sha256File(path);
    if (!sha.ok()) {
      Fail(rel, sha.status().ToString());
      return;
    }
    const std::string got = ToHex(*sha);
    if (got != hex) Fail(rel, "sha256 " + got + ", metadata says " + hex);
  }

  void Fail(const std::string& what, const std::string& why) {
    ++counters_.failed;
    if (counters_.failed <= kFailuresLogged) {
      std::cerr << "mirrorcast-test-reader: failed read #" << counters_.failed << " (metadata read "
                << counters_.reads << "): " << what << ": " << why << std::endl;
    }
  }

  fs::path tree_;
  std::string metadata_;
  Counters counters_;
};

int Usage() {
  std::cerr << "usage: mirrorcast-test-reader --tree DIR --metadata REL [--out FILE]\n";
  return 2;
}

int Main(int argc, char** argv) {
  fs::path tree;
  std::string metadata;
  fs::path out_file;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return Usage();
    if (arg == "--tree") {
      tree = argv[++i];
    } else if (arg == "--metadata") {
      metadata = argv[++i];
    } else if (arg == "--out") {
      out_file = argv[++i];
    } else {
      return Usage();
    }
  }
  if (tree.empty() || metadata.empty()) return Usage();

  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);

  Reader reader(tree, metadata);
  const timespec pause{0, 1000 * 1000};  // 1 ms: let the applier have the CPU too
  while (!g_stop) {
    reader.Iterate();
    if (!g_stop) ::nanosleep(&pause, nullptr);
  }

  const Counters& c = reader.counters();
  std::ostringstream summary;
  summary << "reads=" << c.reads << " files=" << c.files << " failed=" << c.failed
          << " no_metadata=" << c.no_metadata << "\n";
  std::cout << summary.str() << std::flush;
  if (!out_file.empty()) {
    std::ofstream out(out_file, std::ios::trunc);
    out << summary.str();
    out.flush();
    if (!out) {
      std::cerr << "mirrorcast-test-reader: cannot write " << out_file << "\n";
      return 1;
    }
  }
  return c.failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace mirrorcast::testing

int main(int argc, char** argv) { return mirrorcast::testing::Main(argc, argv); }
