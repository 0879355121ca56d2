// Which paths are repository metadata. Metadata is applied after all other
// new content and before deletions, so a client never reads an index that
// names a file the mirror does not have yet.
//
// A pattern ending in '/' matches any path with that directory component
// ("repodata/" matches "f39/x86_64/repodata/repomd.xml"); any other pattern
// matches a path whose last component equals it ("InRelease").
// Index roots (repomd.xml, Release, InRelease, Release.gpg, repomd.xml.asc)
// are ordered last of all.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace mirrorcast {

class MetadataMatcher {
 public:
  // Defaults cover yum/dnf and apt: "repodata/", "dists/", "Release", "InRelease".
  MetadataMatcher();
  explicit MetadataMatcher(std::vector<std::string> patterns);

  bool IsMetadata(std::string_view path) const;
  // 0 for content, 1 for metadata, 2 for index roots: apply in ascending order.
  int ApplyPhase(std::string_view path) const;
  const std::vector<std::string>& patterns() const { return patterns_; }

 private:
  std::vector<std::string> patterns_;
};

}  // namespace mirrorcast
