#include "core/manifest/metadata.h"

#include <algorithm>
#include <array>

namespace mirrorcast {
namespace {

// The files a client reads first and that name everything else. They change
// last, so a client that sees a new index finds all it refers to.
constexpr std::array<std::string_view, 5> kIndexRoots = {"repomd.xml", "Release", "InRelease",
                                                         "Release.gpg", "repomd.xml.asc"};

std::string_view LastComponent(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool IsIndexRoot(std::string_view path) {
  std::string_view name = LastComponent(path);
  return std::find(kIndexRoots.begin(), kIndexRoots.end(), name) != kIndexRoots.end();
}

bool Matches(std::string_view pattern, std::string_view path) {
  if (pattern.empty()) return false;
  if (pattern.back() == '/') {
    // A directory component anywhere: at the start ("repodata/x") or after a
    // slash ("f39/repodata/x"). Only entries strictly inside the directory
    // match; the pattern may span several components ("dists/stable/").
    if (path.substr(0, pattern.size()) == pattern) return true;
    for (size_t pos = path.find(pattern); pos != std::string_view::npos;
         pos = path.find(pattern, pos + 1)) {
      if (pos > 0 && path[pos - 1] == '/') return true;
    }
    return false;
  }
  // The last component(s) of the path.
  if (path == pattern) return true;
  return EndsWith(path, pattern) && path[path.size() - pattern.size() - 1] == '/';
}

}  // namespace

MetadataMatcher::MetadataMatcher()
    : MetadataMatcher(std::vector<std::string>{"repodata/", "dists/", "Release", "InRelease"}) {}

MetadataMatcher::MetadataMatcher(std::vector<std::string> patterns)
    : patterns_(std::move(patterns)) {}

bool MetadataMatcher::IsMetadata(std::string_view path) const {
  // Index roots are always metadata: a flat apt repository keeps
  // "Release.gpg" at the top, where no default pattern reaches, and its
  // signature must not change before the Release it signs.
  if (IsIndexRoot(path)) return true;
  return std::any_of(patterns_.begin(), patterns_.end(),
                     [path](const std::string& pattern) { return Matches(pattern, path); });
}

int MetadataMatcher::ApplyPhase(std::string_view path) const {
  if (IsIndexRoot(path)) return 2;
  return IsMetadata(path) ? 1 : 0;
}

}  // namespace mirrorcast
