// Fuzzes path safety (core/fs/path.h) against an independent model of the
// rules in its header. Every path from a manifest or a peer passes here before
// it touches the disk, so an accepted unsafe path is a security bug: it traps.
//
// Input: "link_path \xff target" (0xff never occurs in valid UTF-8, so it is a
// free separator); without a 0xff the whole input is tried in both roles.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/fs/path.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

// Well-formed UTF-8 per the Unicode standard's table 3-7 (byte ranges, not
// decoding: written differently from the code under test on purpose).
bool WellFormedUtf8(std::string_view s) {
  size_t i = 0;
  auto in = [&](size_t k, unsigned lo, unsigned hi) {
    if (i + k >= s.size()) return false;
    const unsigned c = static_cast<unsigned char>(s[i + k]);
    return c >= lo && c <= hi;
  };
  while (i < s.size()) {
    const unsigned c = static_cast<unsigned char>(s[i]);
    size_t len;
    if (c <= 0x7f) {
      len = 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
      if (!in(1, 0x80, 0xbf)) return false;
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      const unsigned lo = c == 0xe0 ? 0xa0 : 0x80;
      const unsigned hi = c == 0xed ? 0x9f : 0xbf;
      if (!in(1, lo, hi) || !in(2, 0x80, 0xbf)) return false;
      len = 3;
    } else if (c >= 0xf0 && c <= 0xf4) {
      const unsigned lo = c == 0xf0 ? 0x90 : 0x80;
      const unsigned hi = c == 0xf4 ? 0x8f : 0xbf;
      if (!in(1, lo, hi) || !in(2, 0x80, 0xbf) || !in(3, 0x80, 0xbf)) return false;
      len = 4;
    } else {
      return false;
    }
    i += len;
  }
  return true;
}

std::vector<std::string_view> Split(std::string_view s) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    const size_t slash = s.find('/', start);
    if (slash == std::string_view::npos) {
      parts.push_back(s.substr(start));
      return parts;
    }
    parts.push_back(s.substr(start, slash - start));
    start = slash + 1;
  }
}

// The whole rule of ValidateRelativePath, as its header states it.
bool SafeRelativePath(std::string_view rel) {
  if (rel.empty() || rel.size() > kMaxPathBytes) return false;
  if (rel.find('\0') != std::string_view::npos || rel.find('\\') != std::string_view::npos) {
    return false;
  }
  if (!WellFormedUtf8(rel)) return false;
  for (std::string_view c : Split(rel)) {  // also catches a leading or trailing '/'
    if (c.empty() || c == "." || c == ".." || c.size() > kMaxComponentBytes) return false;
  }
  return true;
}

// What an accepted symlink must satisfy: resolved lexically from the link's
// directory it stays inside the tree, and '..' only comes as a leading run.
bool SafeSymlink(std::string_view link, std::string_view target) {
  if (!SafeRelativePath(link)) return false;
  if (target.empty() || target.front() == '/') return false;
  if (target.find('\0') != std::string_view::npos || target.find('\\') != std::string_view::npos) {
    return false;
  }
  if (!WellFormedUtf8(target)) return false;
  std::vector<std::string_view> dir = Split(link);
  dir.pop_back();  // the link's own name
  bool after_name = false;
  for (std::string_view c : Split(target)) {
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      if (after_name || dir.empty()) return false;
      dir.pop_back();
    } else {
      after_name = true;
      dir.push_back(c);
    }
  }
  return true;
}

void CheckPath(std::string_view rel) {
  const bool accepted = ValidateRelativePath(rel).ok();
  if (accepted != SafeRelativePath(rel)) __builtin_trap();

  // ParentOf: a prefix of its argument, ending where the last name starts.
  const std::string_view parent = ParentOf(rel);
  if (!parent.empty()) {
    if (parent.data() != rel.data() || parent.size() >= rel.size() || rel[parent.size()] != '/') {
      __builtin_trap();
    }
    if (rel.substr(parent.size() + 1).find('/') != std::string_view::npos) __builtin_trap();
    // The parent of a safe path is safe.
    if (accepted && !ValidateRelativePath(parent).ok()) __builtin_trap();
  } else if (accepted && rel.find('/') != std::string_view::npos) {
    __builtin_trap();
  }
}

void CheckSymlink(std::string_view link, std::string_view target) {
  if (ValidateSymlinkTarget(link, target).ok() && !SafeSymlink(link, target)) __builtin_trap();
}

}  // namespace

std::vector<std::string> PathSeeds() {
  return {
      "pool/main/h/hello/hello_2.10-2_amd64.deb",
      "dists/stable/Release",
      std::string("dists/current\xff") + "stable",
      std::string("a/b/latest\xff") + "../../pool/x.deb",
      std::string("a/b/link\xff") + "./../c//d/.",
      std::string("top\xff") + "../escape",
      std::string("a/b\xff") + "c/../../x",
      "caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x93\xa6.deb",
      "a/./b",
      "../etc/passwd",
      "/etc/passwd",
      std::string("a\0b", 3),
      "a\\b",
      "a//b",
      "trailing/",
      std::string(300, 'n'),
  };
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast::fuzz;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  CheckPath(bytes);
  const size_t sep = bytes.find('\xff');
  if (sep != std::string_view::npos) {
    const std::string_view link = bytes.substr(0, sep);
    const std::string_view target = bytes.substr(sep + 1);
    CheckPath(link);
    CheckPath(target);
    CheckSymlink(link, target);
  } else {
    CheckSymlink("dists/stable/link", bytes);
    CheckSymlink(bytes, "target");
  }
  return 0;
}
