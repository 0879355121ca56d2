#include "tests/support/tree.h"

#include <sys/stat.h>

#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include "core/crypto/sha256.h"

namespace mirrorcast::testing {

namespace fs = std::filesystem;

void WriteFile(const fs::path& path, const std::string& data, mode_t mode) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + path.string());
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!out) throw std::runtime_error("short write " + path.string());
  }
  if (::chmod(path.c_str(), mode) != 0) throw std::runtime_error("chmod " + path.string());
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string RandomBytes(size_t size, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::string out(size, '\0');
  size_t i = 0;
  while (i < size) {
    uint64_t v = gen();
    for (int b = 0; b < 8 && i < size; ++b, ++i) out[i] = static_cast<char>((v >> (8 * b)) & 0xff);
  }
  return out;
}

TreeSnapshot SnapshotTree(const fs::path& root) {
  TreeSnapshot snap;
  if (!fs::exists(root)) return snap;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    const fs::path rel = fs::relative(it->path(), root);
    if (it.depth() == 0 && rel.string() == ".mirrorcast-staging") {
      it.disable_recursion_pending();
      continue;
    }
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) continue;
    std::ostringstream d;
    if (S_ISLNK(st.st_mode)) {
      d << "l " << fs::read_symlink(it->path()).string();
    } else if (S_ISDIR(st.st_mode)) {
      d << "d " << std::oct << (st.st_mode & 07777);
    } else if (S_ISREG(st.st_mode)) {
      auto sha = Sha256File(it->path());
      d << "f " << st.st_size << " " << (sha.ok() ? ToHex(*sha) : "unreadable") << " " << std::oct
        << (st.st_mode & 07777);
    } else {
      d << "other";
    }
    snap[rel.string()] = d.str();
  }
  return snap;
}

}  // namespace mirrorcast::testing
