// A private temporary directory per fuzzing process, created on first use and
// removed at exit. Targets that need files (delta, key files) keep them here.
// Single-threaded use only, like every libFuzzer target.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace mirrorcast::fuzz {

class ScratchDir {
 public:
  ScratchDir() {
    // $TMPDIR if set, else tmpfs when there is one: targets rewrite files for
    // every input, which on a real disk costs more than the code under test.
    const char* tmp = std::getenv("TMPDIR");
    std::error_code ec;
    std::string base = tmp != nullptr && *tmp != '\0'                  ? tmp
                       : std::filesystem::is_directory("/dev/shm", ec) ? "/dev/shm"
                                                                       : "/tmp";
    std::string tmpl = base + "/mirrorcast-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) __builtin_trap();  // no scratch space: cannot run
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// The process-wide scratch directory.
inline const std::filesystem::path& Scratch() {
  static ScratchDir dir;
  return dir.path();
}

// Replaces `path` with `bytes`; a failure here is the harness's, so it traps.
inline void WriteScratchFile(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) __builtin_trap();
}

}  // namespace mirrorcast::fuzz
