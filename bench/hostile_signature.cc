// What one hostile delta signature costs the process that computes the delta
// (the broker's content worker): CPU seconds and peak RSS of ComputeDelta
// against a generated file, for a signature built to hurt.
//
//   mirrorcast-bench-hostile-sig [--file-mib N] [--sig-mib N | --sig-kib N] [--strong N]
//                                [--block N] [--collide] [--honest]
//
// --collide: the file is zeros and every record carries the weak sum of a
// zero block (with distinct strong sums), so every position of the file hits
// every record of one hash bucket. --honest: the file's own signature, for
// the honest cost. Prints one line: outcome, CPU seconds, peak RSS in MiB.
#include <sys/resource.h>

#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "core/delta/delta.h"

namespace {

double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

long PeakRssKiB() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

void PutBe32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t file_mib = 4, sig_kib = 60u << 10;
  uint32_t strong = 1, block = 128;
  bool collide = false, honest = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::strtoull(argv[++i], nullptr, 10) : 0; };
    if (a == "--file-mib")
      file_mib = next();
    else if (a == "--sig-mib")
      sig_kib = next() << 10;
    else if (a == "--sig-kib")
      sig_kib = next();
    else if (a == "--strong")
      strong = static_cast<uint32_t>(next());
    else if (a == "--block")
      block = static_cast<uint32_t>(next());
    else if (a == "--collide")
      collide = true;
    else if (a == "--honest")
      honest = true;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("mc-hostile-sig-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path file = dir / "file";
  const fs::path out = dir / "delta";
  std::mt19937_64 rng(7);
  {
    std::string bytes(file_mib << 20, '\0');
    if (!collide) {
      for (auto& c : bytes) c = static_cast<char>(rng());
    }
    std::ofstream(file, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::string sig;
  if (honest) {
    auto s = mirrorcast::ComputeSignature(file);
    if (!s.ok()) return 1;
    sig = *s;
  } else {
    uint32_t weak = 0;
    if (collide) {
      // The weak sum of one zero block, from librsync itself.
      const fs::path zero = dir / "zero";
      std::string z(block, '\0');
      std::ofstream(zero, std::ios::binary).write(z.data(), static_cast<std::streamsize>(z.size()));
      auto s = mirrorcast::ComputeSignature(zero);  // rs_sig_args picks 256 for it
      if (!s.ok() || s->size() < 16) return 1;
      block = 256;
      const auto* u = reinterpret_cast<const unsigned char*>(s->data() + 12);
      weak = (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | u[3];
    }
    PutBe32(sig, 0x72730147);  // RS_RK_BLAKE2_SIG_MAGIC
    PutBe32(sig, block);
    PutBe32(sig, strong);
    const uint64_t records = ((sig_kib << 10) - 12) / (4 + strong);
    sig.reserve(12 + records * (4 + strong));
    for (uint64_t r = 0; r < records; ++r) {
      PutBe32(sig, collide ? weak : static_cast<uint32_t>(rng()));
      for (uint32_t k = 0; k < strong; ++k) sig.push_back(static_cast<char>(rng()));
    }
  }
  const double cpu0 = CpuSeconds();
  mirrorcast::DeltaStats stats;
  mirrorcast::Status st = mirrorcast::ComputeDelta(sig, file, out, &stats);
  const double cpu = CpuSeconds() - cpu0;
  std::printf("signature=%zu bytes file=%llu MiB: %s; cpu=%.3f s peak_rss=%.1f MiB\n", sig.size(),
              static_cast<unsigned long long>(file_mib),
              st.ok() ? "computed" : st.ToString().c_str(), cpu,
              static_cast<double>(PeakRssKiB()) / 1024.0);
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
