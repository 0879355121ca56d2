#include "core/mirror/tree_binding.h"

#include <sys/stat.h>

#include <optional>
#include <sstream>
#include <string>
#include <system_error>

#include "core/base/log.h"
#include "core/fs/atomic.h"

namespace mirrorcast {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxBindingBytes = 16384;

struct Binding {
  std::string path;
  unsigned long long device = 0;
  unsigned long long inode = 0;
};

Result<Binding> Describe(const fs::path& tree) {
  std::error_code ec;
  const fs::path canonical = fs::canonical(tree, ec);
  if (ec) return Status::IoError("resolve " + tree.string() + ": " + ec.message());
  struct stat st {};
  if (::stat(canonical.c_str(), &st) != 0) {
    return Status::FromErrno("stat " + canonical.string(), errno);
  }
  return Binding{canonical.string(), static_cast<unsigned long long>(st.st_dev),
                 static_cast<unsigned long long>(st.st_ino)};
}

std::string Encode(const Binding& b) {
  return "path " + b.path + "\ndevice " + std::to_string(b.device) + "\ninode " +
         std::to_string(b.inode) + "\n";
}

Result<Binding> Decode(const std::string& text, const fs::path& file) {
  Binding b;
  std::istringstream in(text);
  bool path = false, device = false, inode = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("path ", 0) == 0) {
      b.path = line.substr(5);
      path = true;
    } else if (line.rfind("device ", 0) == 0) {
      device = static_cast<bool>(std::istringstream(line.substr(7)) >> b.device);
    } else if (line.rfind("inode ", 0) == 0) {
      inode = static_cast<bool>(std::istringstream(line.substr(6)) >> b.inode);
    }
  }
  if (!path || !device || !inode) {
    return Status::Corruption(file.string() +
                              " is damaged (expected path, device and inode "
                              "lines); remove it to bind the state to its tree again");
  }
  return b;
}

Result<std::optional<Binding>> Recorded(const fs::path& state) {
  const fs::path file = state / "tree";
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::optional<Binding>();
  MC_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file, kMaxBindingBytes));
  MC_ASSIGN_OR_RETURN(Binding b, Decode(text, file));
  return std::optional<Binding>(std::move(b));
}

Status Compare(const fs::path& state, const Binding& recorded, const Binding& now,
               const fs::path& tree) {
  if (recorded.path == now.path || (recorded.device == now.device && recorded.inode == now.inode)) {
    return Status::Ok();
  }
  return Status::FailedPrecondition(
      "the state " + state.string() + " belongs to the tree " + EscapeForLog(recorded.path, 1024) +
      ", not to " + EscapeForLog(now.path, 1024) + " (" + tree.string() +
      "): give the --tree it was made for, or a --state of this tree's own. If this tree was "
      "moved or restored on purpose, remove " +
      (state / "tree").string() + " first");
}

}  // namespace

Status CheckStateTree(const fs::path& state, const fs::path& tree) {
  MC_ASSIGN_OR_RETURN(std::optional<Binding> recorded, Recorded(state));
  if (!recorded) return Status::Ok();
  MC_ASSIGN_OR_RETURN(Binding now, Describe(tree));
  return Compare(state, *recorded, now, tree);
}

Status BindStateToTree(const fs::path& state, const fs::path& tree) {
  MC_ASSIGN_OR_RETURN(std::optional<Binding> recorded, Recorded(state));
  MC_ASSIGN_OR_RETURN(Binding now, Describe(tree));
  if (recorded) return Compare(state, *recorded, now, tree);
  return WriteFileAtomic(state / "tree", Encode(now), 0644);
}

}  // namespace mirrorcast
