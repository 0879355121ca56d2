#include "core/fs/path.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdint>

namespace mirrorcast {
namespace {

// A printable rendering of untrusted bytes for error messages: NUL and other
// control bytes would otherwise garble logs.
std::string Printable(std::string_view s) {
  static constexpr size_t kMaxShown = 200;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxShown) out += "...";
  return out;
}

Status Reject(std::string_view what, std::string_view path) {
  std::string msg(what);
  msg += ": '";
  msg += Printable(path);
  msg += "'";
  return Status::Rejected(std::move(msg));
}

// Paths travel in protobuf `string` fields, whose parser refuses invalid
// UTF-8: a non-UTF-8 name would make the whole manifest unparseable on every
// mirror. Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

Status ValidateRelativePath(std::string_view rel) {
  if (rel.empty()) return Status::Rejected("empty path");
  if (rel.size() > kMaxPathBytes) return Reject("path too long", rel);
  if (rel.find('\0') != std::string_view::npos) return Reject("path contains NUL", rel);
  if (rel.find('\\') != std::string_view::npos) return Reject("path contains backslash", rel);
  if (!IsValidUtf8(rel)) return Reject("path is not valid UTF-8", rel);
  if (rel.front() == '/') return Reject("absolute path", rel);
  if (rel.back() == '/') return Reject("path ends with '/'", rel);
  size_t start = 0;
  while (start <= rel.size()) {
    size_t end = rel.find('/', start);
    if (end == std::string_view::npos) end = rel.size();
    std::string_view component = rel.substr(start, end - start);
    if (component.empty()) return Reject("empty path component", rel);
    if (component == ".") return Reject("'.' path component", rel);
    if (component == "..") return Reject("'..' path component", rel);
    if (component.size() > kMaxComponentBytes) return Reject("path component too long", rel);
    start = end + 1;
  }
  return Status::Ok();
}

// Lexical resolution is only sound while every component walked through is a
// real directory. A ".." that follows a name could climb out of a symlinked
// directory that points to the root ("a/s -> ..", then "a/l -> s/../x" is
// lexically "a/x" but the kernel resolves it to root/../x). So ".." is only
// accepted as a leading run, where it walks up through the link's own parent
// directories, which are real directories of the tree; after the first name
// every component must descend. Targets that need ".." in the middle are
// vanishingly rare in package repositories and are refused.
Status ValidateSymlinkTarget(std::string_view link_path, std::string_view target) {
  Status link_ok = ValidateRelativePath(link_path);
  if (!link_ok.ok()) return link_ok.WithContext("symlink path");
  if (target.empty()) return Reject("empty symlink target", link_path);
  if (target.size() > kMaxPathBytes) return Reject("symlink target too long", link_path);
  if (target.find('\0') != std::string_view::npos) {
    return Reject("symlink target contains NUL", link_path);
  }
  if (target.find('\\') != std::string_view::npos) {
    return Reject("symlink target contains backslash", link_path);
  }
  if (!IsValidUtf8(target)) return Reject("symlink target is not valid UTF-8", link_path);
  if (target.front() == '/') return Reject("absolute symlink target", link_path);

  // Depth of the directory holding the link: "a/b/link" lives at depth 2.
  int64_t depth = 0;
  for (char c : link_path) depth += c == '/' ? 1 : 0;

  bool descended = false;
  size_t start = 0;
  while (start <= target.size()) {
    size_t end = target.find('/', start);
    if (end == std::string_view::npos) end = target.size();
    std::string_view component = target.substr(start, end - start);
    start = end + 1;
    if (component.empty() || component == ".") continue;
    if (component.size() > kMaxComponentBytes) {
      return Reject("symlink target component too long", link_path);
    }
    if (component == "..") {
      if (descended) return Reject("symlink target has '..' after a name", link_path);
      if (--depth < 0) return Reject("symlink target escapes the tree", link_path);
      continue;
    }
    descended = true;
    ++depth;
  }
  return Status::Ok();
}

Status CheckNoSymlinkParents(const std::filesystem::path& root, std::string_view rel) {
  MC_RETURN_IF_ERROR(ValidateRelativePath(rel));
  std::string current = root.string();
  size_t start = 0;
  for (;;) {
    size_t slash = rel.find('/', start);
    if (slash == std::string_view::npos) break;  // the last component is not checked
    current += '/';
    current += rel.substr(start, slash - start);
    start = slash + 1;
    struct stat st;
    if (::lstat(current.c_str(), &st) != 0) {
      int err = errno;
      // Missing (or a file where later components would go, which the
      // caller's mkdir/open reports): nothing below can be a symlink yet.
      if (err == ENOENT) return Status::Ok();
      return Status::FromErrno("lstat " + current, err);
    }
    if (S_ISLNK(st.st_mode)) return Reject("parent is a symlink", current);
    if (!S_ISDIR(st.st_mode)) return Reject("parent is not a directory", current);
  }
  return Status::Ok();
}

std::string_view ParentOf(std::string_view rel) {
  size_t slash = rel.rfind('/');
  if (slash == std::string_view::npos) return {};
  return rel.substr(0, slash);
}

}  // namespace mirrorcast
