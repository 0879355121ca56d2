// mirrorcast-bench-gen: builds and changes the generated repository trees that
// bench/run.sh measures, fast enough for 100k files (a bash loop is not).
//
//   tree DIR --small N [--min B] [--max B] [--large K] [--large-bytes B] [--seed S]
//            [--per-dir P]
//       A yum-style tree: N packages under Packages/<a..z>/ with log-uniform
//       sizes in [min, max], K large images under isos/, and repodata/
//       (content-addressed primary/filelists blobs sized like real ones, plus
//       repomd.xml naming them). With --per-dir P the packages are spread
//       over directories of P files each, Packages/<a..z>/<letter><NNNN>/,
//       as in a large distribution tree (bench/scale.sh).
//   update DIR [--modify M] [--add A] [--delete D] [--seed S] [--no-repodata]
//              [--beside] [--list FILE]
//       Rewrites M existing packages with new content, adds A packages,
//       deletes D, then regenerates repodata/ (unless --no-repodata). Every
//       write goes to a temporary file renamed over the target, never in
//       place, so trees seeded with hard links (cp -al) keep the old bytes.
//       Prints the number of package files written and deleted. --beside
//       puts each added package in the directory of an existing one (for
//       --per-dir trees); --list writes every path it wrote or deleted, one
//       repo-relative path per line (what mirrorcast-publish --paths-from
//       takes).
//   mutate FILE --regions R --region-bytes B [--seed S]
//       Writes a copy of FILE with R regions of B random bytes spread over it,
//       renamed over FILE (again never in place). Prints the bytes changed.
//   sigsize FILE
//       Prints the size of the librsync signature a mirror computes for FILE
//       and uploads to ask for a delta (the same ComputeSignature call).
//   measure OUTFILE -- COMMAND [ARGS...]
//       Runs COMMAND, waits for it and writes its wall time, user and system
//       CPU seconds and peak RSS (ru_maxrss: its VmHWM, or that of its
//       largest waited-for descendant) to OUTFILE as
//       "wall=S user=S sys=S maxrss_kb=K status=N". Exits with COMMAND's
//       status (128+signal if it was killed).
//
// Content is pseudo-random (incompressible, like packed packages) and fully
// determined by the seed, so two runs generate the same trees.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/delta/delta.h"

namespace fs = std::filesystem;

namespace {

// splitmix64: tiny, fast and good enough to make bytes no delta finds twice.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  void Fill(char* out, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const uint64_t v = Next();
      std::memcpy(out + i, &v, 8);
    }
    if (i < n) {
      const uint64_t v = Next();
      std::memcpy(out + i, &v, n - i);
    }
  }

 private:
  uint64_t state_;
};

uint64_t HashString(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

[[noreturn]] void Fail(const std::string& what) {
  throw std::runtime_error(what + (errno ? std::string(": ") + std::strerror(errno) : ""));
}

void WriteAll(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      Fail("write " + path);
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
}

enum class Write { kFresh, kReplace };

// Writes `size` pseudo-random bytes to `path`: directly for a new tree
// (kFresh), else to path.gen-tmp renamed over `path` (kReplace).
void WriteRandomFile(const fs::path& path, uint64_t size, uint64_t seed, Write how) {
  static std::vector<char> buffer(1 << 20);
  static fs::path last_dir;
  if (path.parent_path() != last_dir) {
    fs::create_directories(path.parent_path());
    last_dir = path.parent_path();
  }
  const std::string tmp = how == Write::kFresh ? path.string() : path.string() + ".gen-tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Fail("create " + tmp);
  Random random(seed);
  uint64_t left = size;
  while (left > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buffer.size()));
    random.Fill(buffer.data(), n);
    WriteAll(fd, buffer.data(), n, tmp);
    left -= n;
  }
  if (how == Write::kFresh) {
    // A new tree holds files built days ago, as a real repository does; it
    // also keeps a later rewrite from sharing its mtime second (rsync's
    // quick check compares size and whole-second mtime).
    const timespec times[2] = {
        {0, UTIME_OMIT},
        {static_cast<time_t>(::time(nullptr) - 86400 - static_cast<time_t>(seed % (30 * 86400))),
         static_cast<long>(seed % 1000000000)}};
    if (::futimens(fd, times) != 0) Fail("futimens " + tmp);
  }
  if (::close(fd) != 0) Fail("close " + tmp);
  if (how == Write::kReplace && ::rename(tmp.c_str(), path.c_str()) != 0) Fail("rename " + tmp);
}

void WriteTextFile(const fs::path& path, const std::string& text) {
  const std::string tmp = path.string() + ".gen-tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Fail("create " + tmp);
  WriteAll(fd, text.data(), text.size(), tmp);
  if (::close(fd) != 0) Fail("close " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) Fail("rename " + tmp);
}

// Log-uniform in [lo, hi]: many small packages, a long tail of bigger ones.
uint64_t PackageSize(Random& random, uint64_t lo, uint64_t hi) {
  if (hi <= lo) return lo;
  const double u = static_cast<double>(random.Next() >> 11) / 9007199254740992.0;
  const double v = std::exp(std::log(static_cast<double>(lo)) +
                            u * (std::log(static_cast<double>(hi)) - std::log(lo)));
  return std::clamp<uint64_t>(static_cast<uint64_t>(v), lo, hi);
}

std::string Hex(uint64_t v) {
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(v));
  return out;
}

std::vector<std::string> ListPackages(const fs::path& root) {
  std::vector<std::string> out;
  const fs::path packages = root / "Packages";
  if (!fs::exists(packages)) return out;
  for (const auto& entry : fs::recursive_directory_iterator(packages)) {
    // lexically_relative: fs::relative canonicalizes, a few syscalls per file.
    if (entry.is_regular_file()) out.push_back(entry.path().lexically_relative(root).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// repodata/ as createrepo lays it out: blobs named by content, sized like
// compressed primary (~100 B per package) and filelists (~250 B per
// package), and repomd.xml (renamed in last) naming them. Old blobs go.
// Returns the repo-relative paths it wrote or removed.
std::vector<std::string> WriteRepodata(const fs::path& root, uint64_t seed) {
  std::vector<std::string> touched;
  const fs::path dir = root / "repodata";
  fs::create_directories(dir);
  std::vector<fs::path> old;
  for (const auto& entry : fs::directory_iterator(dir)) old.push_back(entry.path());
  const uint64_t packages = ListPackages(root).size();
  std::string repomd =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<repomd xmlns=\"http://linux.duke.edu/metadata/repo\">\n  <revision>" +
      std::to_string(seed) + "</revision>\n";
  std::vector<fs::path> keep;
  const std::pair<const char*, uint64_t> kinds[] = {{"primary", 100}, {"filelists", 250}};
  for (const auto& [kind, per_package] : kinds) {
    const uint64_t blob_seed = HashString(kind) ^ (seed * 0x9e3779b97f4a7c15ULL);
    const std::string name = Hex(blob_seed) + "-" + kind + ".xml.gz";
    const uint64_t size = 4096 + packages * per_package;
    WriteRandomFile(dir / name, size, blob_seed, Write::kReplace);
    keep.push_back(dir / name);
    touched.push_back("repodata/" + name);
    repomd += "  <data type=\"" + std::string(kind) + "\">\n    <location href=\"repodata/" + name +
              "\"/>\n    <size>" + std::to_string(size) + "</size>\n  </data>\n";
  }
  repomd += "</repomd>\n";
  WriteTextFile(dir / "repomd.xml", repomd);
  keep.push_back(dir / "repomd.xml");
  touched.push_back("repodata/repomd.xml");
  for (const auto& path : old) {
    if (std::find(keep.begin(), keep.end(), path) == keep.end()) {
      fs::remove(path);
      touched.push_back("repodata/" + path.filename().string());
    }
  }
  return touched;
}

using Flags = std::map<std::string, std::string>;

Flags ParseFlags(int argc, char** argv, int first, std::vector<std::string>* positional) {
  Flags flags;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.starts_with("--")) {
      if (arg == "--no-repodata" || arg == "--beside") {
        flags[arg.substr(2)] = "1";
      } else if (i + 1 < argc) {
        flags[arg.substr(2)] = argv[++i];
      } else {
        throw std::runtime_error("missing value for " + arg);
      }
    } else {
      positional->push_back(arg);
    }
  }
  return flags;
}

uint64_t Number(const Flags& flags, const std::string& name, uint64_t fallback) {
  auto it = flags.find(name);
  if (it == flags.end()) return fallback;
  size_t used = 0;
  const uint64_t v = std::stoull(it->second, &used);
  if (used != it->second.size()) throw std::runtime_error("bad number for --" + name);
  return v;
}

int Tree(const fs::path& root, const Flags& flags) {
  const uint64_t small = Number(flags, "small", 1000);
  const uint64_t lo = Number(flags, "min", 1024);
  const uint64_t hi = Number(flags, "max", 16384);
  const uint64_t large = Number(flags, "large", 0);
  const uint64_t large_bytes = Number(flags, "large-bytes", 64ULL << 20);
  const uint64_t seed = Number(flags, "seed", 1);
  const uint64_t per_dir = Number(flags, "per-dir", 0);
  Random random(seed);
  uint64_t bytes = 0;
  for (uint64_t i = 0; i < small; ++i) {
    std::string rel;
    if (per_dir == 0) {
      const char letter = static_cast<char>('a' + i % 26);
      rel = std::string("Packages/") + letter + "/" + letter + "pkg" + std::to_string(i) +
            "-1.0-1.x86_64.rpm";
    } else {
      const uint64_t dir = i / per_dir;
      const char letter = static_cast<char>('a' + dir % 26);
      char sub[32];
      std::snprintf(sub, sizeof sub, "%c%04llu", letter, static_cast<unsigned long long>(dir));
      rel = std::string("Packages/") + letter + "/" + sub + "/" + letter + "pkg" +
            std::to_string(i) + "-1.0-1.x86_64.rpm";
    }
    const uint64_t size = PackageSize(random, lo, hi);
    WriteRandomFile(root / rel, size, random.Next(), Write::kFresh);
    bytes += size;
  }
  for (uint64_t i = 0; i < large; ++i) {
    WriteRandomFile(root / "isos" / ("image-" + std::to_string(i) + ".iso"), large_bytes,
                    random.Next(), Write::kFresh);
    bytes += large_bytes;
  }
  WriteRepodata(root, seed);
  std::printf("files=%llu bytes=%llu\n", static_cast<unsigned long long>(small + large + 3),
              static_cast<unsigned long long>(bytes));
  return 0;
}

int Update(const fs::path& root, const Flags& flags) {
  const uint64_t modify = Number(flags, "modify", 0);
  const uint64_t add = Number(flags, "add", 0);
  const uint64_t remove = Number(flags, "delete", 0);
  const uint64_t seed = Number(flags, "seed", 2);
  const uint64_t lo = Number(flags, "min", 1024);
  const uint64_t hi = Number(flags, "max", 16384);
  Random random(seed * 0x2545f4914f6cdd1dULL + 7);
  std::vector<std::string> packages = ListPackages(root);
  // A deterministic shuffle picks distinct packages to rewrite and delete.
  for (size_t i = packages.size(); i > 1; --i)
    std::swap(packages[i - 1], packages[random.Below(i)]);
  const bool beside = flags.count("beside") > 0;
  if (modify + remove + (beside ? add : 0) > packages.size())
    throw std::runtime_error("tree has too few packages");
  std::vector<std::string> touched;
  uint64_t written = 0;
  for (uint64_t i = 0; i < modify; ++i) {
    WriteRandomFile(root / packages[i], PackageSize(random, lo, hi), random.Next(),
                    Write::kReplace);
    touched.push_back(packages[i]);
    ++written;
  }
  for (uint64_t i = 0; i < remove; ++i) {
    fs::remove(root / packages[modify + i]);
    touched.push_back(packages[modify + i]);
  }
  for (uint64_t i = 0; i < add; ++i) {
    std::string rel;
    if (beside) {
      // Next to an existing package (not one rewritten or deleted above).
      const fs::path dir = fs::path(packages[modify + remove + i]).parent_path();
      rel = (dir / ("xnew" + std::to_string(seed) + "-" + std::to_string(i) + "-1.0-1.x86_64.rpm"))
                .string();
    } else {
      const char letter = static_cast<char>('a' + i % 26);
      rel = std::string("Packages/") + letter + "/" + letter + "new" + std::to_string(seed) + "-" +
            std::to_string(i) + "-1.0-1.x86_64.rpm";
    }
    WriteRandomFile(root / rel, PackageSize(random, lo, hi), random.Next(), Write::kReplace);
    touched.push_back(rel);
    ++written;
  }
  if (!flags.count("no-repodata")) {
    for (std::string& rel : WriteRepodata(root, seed)) touched.push_back(std::move(rel));
  }
  if (auto it = flags.find("list"); it != flags.end()) {
    std::ofstream list(it->second, std::ios::trunc);
    for (const std::string& rel : touched) list << rel << "\n";
    list.close();
    if (!list) Fail("write " + it->second);
  }
  std::printf("written=%llu deleted=%llu repodata=%s\n", static_cast<unsigned long long>(written),
              static_cast<unsigned long long>(remove), flags.count("no-repodata") ? "no" : "yes");
  return 0;
}

int Mutate(const fs::path& file, const Flags& flags) {
  const uint64_t regions = Number(flags, "regions", 8);
  const uint64_t region_bytes = Number(flags, "region-bytes", 256 * 1024);
  const uint64_t seed = Number(flags, "seed", 3);
  struct stat st;
  if (::stat(file.c_str(), &st) != 0) Fail("stat " + file.string());
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (regions * region_bytes > size) throw std::runtime_error("regions larger than the file");
  // Region i starts near the middle of slice i, off any block boundary.
  std::vector<uint64_t> starts;
  Random random(seed);
  const uint64_t slice = size / regions;
  for (uint64_t i = 0; i < regions; ++i) {
    uint64_t start = i * slice + (slice - region_bytes) / 2 + random.Below(4093);
    starts.push_back(std::min(start, size - region_bytes));
  }
  const std::string tmp = file.string() + ".gen-tmp";
  const int in = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) Fail("open " + file.string());
  const int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 07777);
  if (out < 0) Fail("create " + tmp);
  std::vector<char> buffer(1 << 20);
  uint64_t offset = 0;
  while (offset < size) {
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      Fail("read " + file.string());
    }
    if (n == 0) break;
    const uint64_t end = offset + static_cast<uint64_t>(n);
    for (uint64_t start : starts) {
      const uint64_t from = std::max(start, offset);
      const uint64_t to = std::min(start + region_bytes, end);
      if (from < to) random.Fill(buffer.data() + (from - offset), static_cast<size_t>(to - from));
    }
    WriteAll(out, buffer.data(), static_cast<size_t>(n), tmp);
    offset = end;
  }
  ::close(in);
  if (::close(out) != 0) Fail("close " + tmp);
  if (::rename(tmp.c_str(), file.c_str()) != 0) Fail("rename " + tmp);
  std::printf("changed_bytes=%llu regions=%llu\n",
              static_cast<unsigned long long>(regions * region_bytes),
              static_cast<unsigned long long>(regions));
  return 0;
}

int SignatureSize(const fs::path& file) {
  auto signature = mirrorcast::ComputeSignature(file);
  if (!signature.ok()) throw std::runtime_error(signature.status().ToString());
  std::printf("%zu\n", signature.value().size());
  return 0;
}

// measure OUTFILE -- COMMAND...: see the top of the file.
int Measure(int argc, char** argv) {
  if (argc < 5 || std::string(argv[3]) != "--") {
    throw std::runtime_error("usage: measure OUTFILE -- COMMAND [ARGS...]");
  }
  const std::string out = argv[2];
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) Fail("fork");
  if (pid == 0) {
    ::execvp(argv[4], argv + 4);
    std::fprintf(stderr, "mirrorcast-bench-gen measure: cannot run %s: %s\n", argv[4],
                 std::strerror(errno));
    ::_exit(127);
  }
  int wstatus = 0;
  rusage usage{};
  while (::wait4(pid, &wstatus, 0, &usage) < 0) {
    if (errno != EINTR) Fail("wait4");
  }
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int status = WIFEXITED(wstatus)     ? WEXITSTATUS(wstatus)
                     : WIFSIGNALED(wstatus) ? 128 + WTERMSIG(wstatus)
                                            : 255;
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  FILE* f = std::fopen(out.c_str(), "w");
  if (f == nullptr) Fail("create " + out);
  std::fprintf(f, "wall=%.6f user=%.6f sys=%.6f maxrss_kb=%ld status=%d\n", wall,
               seconds(usage.ru_utime), seconds(usage.ru_stime), usage.ru_maxrss, status);
  if (std::fclose(f) != 0) Fail("write " + out);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: mirrorcast-bench-gen tree|update DIR [flags] | mutate FILE [flags] | "
                 "sigsize FILE | measure OUTFILE -- COMMAND...\n");
    return 2;
  }
  try {
    const std::string command = argv[1];
    if (command == "measure") return Measure(argc, argv);
    std::vector<std::string> positional;
    const Flags flags = ParseFlags(argc, argv, 2, &positional);
    if (positional.size() != 1) throw std::runtime_error("expected exactly one path");
    errno = 0;
    if (command == "tree") return Tree(positional[0], flags);
    if (command == "update") return Update(positional[0], flags);
    if (command == "mutate") return Mutate(positional[0], flags);
    if (command == "sigsize") return SignatureSize(positional[0]);
    throw std::runtime_error("unknown command " + command);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mirrorcast-bench-gen: %s\n", e.what());
    return 1;
  }
}
