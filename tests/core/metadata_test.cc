#include "core/manifest/metadata.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace mirrorcast {
namespace {

TEST(MetadataTest, DefaultsCoverYumAndApt) {
  MetadataMatcher m;
  EXPECT_EQ(m.patterns(),
            (std::vector<std::string>{"repodata/", "dists/", "Release", "InRelease"}));
  for (const char* meta :
       {"repodata/primary.xml.gz", "f39/x86_64/repodata/repomd.xml",
        "f39/x86_64/repodata/abc-primary.xml.zst",
        "debian/dists/bookworm/main/binary-amd64/Packages.xz", "dists/bookworm/InRelease",
        "Release", "InRelease", "flat/Release", "flat/Release.gpg", "repodata/repomd.xml.asc"}) {
    EXPECT_TRUE(m.IsMetadata(meta)) << meta;
  }
  for (const char* content :
       {"f39/x86_64/Packages/f/foo-1.0.rpm", "pool/main/f/foo/foo_1.0_amd64.deb", "myrepodata/x",
        "repodata", "x/repodata", "distsx/y", "Release.txt", "NotRelease", "pool/InRelease.bak",
        "isos/Fedora.iso"}) {
    EXPECT_FALSE(m.IsMetadata(content)) << content;
  }
}

TEST(MetadataTest, ApplyPhasesOrderContentMetadataIndexRoots) {
  MetadataMatcher m;
  EXPECT_EQ(m.ApplyPhase("pool/main/f/foo/foo_1.0_amd64.deb"), 0);
  EXPECT_EQ(m.ApplyPhase("f39/x86_64/Packages/f/foo-1.0.rpm"), 0);
  EXPECT_EQ(m.ApplyPhase("f39/x86_64/repodata/abc-primary.xml.zst"), 1);
  EXPECT_EQ(m.ApplyPhase("dists/bookworm/main/binary-amd64/Packages.xz"), 1);
  EXPECT_EQ(m.ApplyPhase("f39/x86_64/repodata/repomd.xml"), 2);
  EXPECT_EQ(m.ApplyPhase("f39/x86_64/repodata/repomd.xml.asc"), 2);
  EXPECT_EQ(m.ApplyPhase("dists/bookworm/Release"), 2);
  EXPECT_EQ(m.ApplyPhase("dists/bookworm/InRelease"), 2);
  EXPECT_EQ(m.ApplyPhase("dists/bookworm/Release.gpg"), 2);

  // Sorting a change set by phase puts the index roots last.
  std::vector<std::string> paths = {"dists/b/InRelease", "dists/b/main/Packages.xz", "pool/a.deb",
                                    "dists/b/Release", "pool/b.deb"};
  std::stable_sort(paths.begin(), paths.end(), [&](const std::string& a, const std::string& b) {
    return m.ApplyPhase(a) < m.ApplyPhase(b);
  });
  EXPECT_EQ(paths, (std::vector<std::string>{"pool/a.deb", "pool/b.deb", "dists/b/main/Packages.xz",
                                             "dists/b/InRelease", "dists/b/Release"}));
}

TEST(MetadataTest, CustomPatterns) {
  MetadataMatcher m({"meta/", "index.json", "a/b/"});
  EXPECT_TRUE(m.IsMetadata("meta/x"));
  EXPECT_TRUE(m.IsMetadata("deep/meta/x/y"));
  EXPECT_TRUE(m.IsMetadata("index.json"));
  EXPECT_TRUE(m.IsMetadata("sub/index.json"));
  EXPECT_TRUE(m.IsMetadata("x/a/b/c"));
  EXPECT_TRUE(m.IsMetadata("a/b/c"));
  EXPECT_FALSE(m.IsMetadata("xa/b/c"));
  EXPECT_FALSE(m.IsMetadata("a/bc/d"));
  EXPECT_FALSE(m.IsMetadata("repodata/primary.xml"));  // defaults replaced
  EXPECT_FALSE(m.IsMetadata("notindex.json"));
  EXPECT_EQ(m.ApplyPhase("meta/x"), 1);
  EXPECT_EQ(m.ApplyPhase("content.bin"), 0);
  // Index roots stay last whatever the patterns say.
  EXPECT_EQ(m.ApplyPhase("Release"), 2);
}

TEST(MetadataTest, EmptyPatternMatchesNothing) {
  MetadataMatcher m(std::vector<std::string>{""});
  EXPECT_FALSE(m.IsMetadata("anything"));
  EXPECT_EQ(m.ApplyPhase("anything"), 0);
}

}  // namespace
}  // namespace mirrorcast
