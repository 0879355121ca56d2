// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on
// destruction unless MIRRORCAST_KEEP_TEST_DIRS is set (for debugging).
#pragma once

#include <filesystem>
#include <string>

namespace mirrorcast::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "mirrorcast-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& rel) const { return path_ / rel; }

 private:
  std::filesystem::path path_;
};

}  // namespace mirrorcast::testing
