// CURVE key files (core/net/curve.h): the format keygen writes, the modes,
// and the refusal of files and directories others could replace.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "core/net/curve.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

namespace fs = std::filesystem;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

mode_t ModeOf(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

TEST(CurveKeysTest, SavedPairLoadsBackWithModesAndFormat) {
  TempDir dir;
  auto keys = GenerateCurveKeyPair();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_TRUE(IsCurveKeyZ85(keys->public_z85));
  EXPECT_TRUE(IsCurveKeyZ85(keys->secret_z85));
  EXPECT_NE(keys->public_z85, keys->secret_z85);
  const std::string prefix = (dir / "broker").string();
  ASSERT_TRUE(SaveCurveKeyFiles(*keys, prefix).ok());
  EXPECT_EQ(ModeOf(prefix + ".curve.key"), 0600u);
  EXPECT_EQ(ModeOf(prefix + ".curve.pub"), 0644u);
  EXPECT_EQ(ReadFile(prefix + ".curve.pub"),
            "mirrorcast-curve-public-v1 " + keys->public_z85 + "\n");
  EXPECT_EQ(ReadFile(prefix + ".curve.key"),
            "mirrorcast-curve-secret-v1 " + keys->secret_z85 + "\n");

  auto secret = LoadCurveSecretFile(prefix + ".curve.key");
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_EQ(secret->secret_z85, keys->secret_z85);
  EXPECT_EQ(secret->public_z85, keys->public_z85);  // derived from the secret
  auto pub = LoadCurvePublicFile(prefix + ".curve.pub");
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_EQ(*pub, keys->public_z85);

  // Never overwritten, and no lone secret left by a clash.
  auto other = GenerateCurveKeyPair();
  ASSERT_TRUE(other.ok());
  Status again = SaveCurveKeyFiles(*other, prefix);
  EXPECT_EQ(again.code(), Status::Code::kAlreadyExists) << again.ToString();
  EXPECT_EQ(ReadFile(prefix + ".curve.key"),
            "mirrorcast-curve-secret-v1 " + keys->secret_z85 + "\n");
}

TEST(CurveKeysTest, WrongKindsAndMalformedKeysAreRefused) {
  TempDir dir;
  auto keys = GenerateCurveKeyPair();
  ASSERT_TRUE(keys.ok());
  const std::string prefix = (dir / "k").string();
  ASSERT_TRUE(SaveCurveKeyFiles(*keys, prefix).ok());
  // A public file is no secret file and the other way round.
  EXPECT_FALSE(LoadCurvePublicFile(prefix + ".curve.key").ok());
  WriteFile(dir / "pub-as-secret", ReadFile(prefix + ".curve.pub"), 0600);
  EXPECT_FALSE(LoadCurveSecretFile(dir / "pub-as-secret").ok());
  // One character that is no Z85, and a short key.
  std::string bad = keys->public_z85;
  bad[3] = '~';
  WriteFile(dir / "bad.pub", "mirrorcast-curve-public-v1 " + bad + "\n", 0644);
  auto refused = LoadCurvePublicFile(dir / "bad.pub");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("keygen --curve"), std::string::npos)
      << refused.status().message();
  WriteFile(dir / "short.pub", "mirrorcast-curve-public-v1 " + keys->public_z85.substr(1) + "\n",
            0644);
  EXPECT_FALSE(LoadCurvePublicFile(dir / "short.pub").ok());
  EXPECT_FALSE(IsCurveKeyZ85(bad));
  EXPECT_FALSE(IsCurveKeyZ85(keys->public_z85.substr(1)));
}

// The trust-file checks of core/crypto apply: a secret others can read, a
// public key others can write, or one in a directory others can write.
TEST(CurveKeysTest, KeyFilesOthersCouldReadOrReplaceAreRefused) {
  TempDir dir;
  auto keys = GenerateCurveKeyPair();
  ASSERT_TRUE(keys.ok());
  const std::string prefix = (dir / "m").string();
  ASSERT_TRUE(SaveCurveKeyFiles(*keys, prefix).ok());

  ASSERT_EQ(::chmod((prefix + ".curve.key").c_str(), 0640), 0);
  auto readable = LoadCurveSecretFile(prefix + ".curve.key");
  ASSERT_FALSE(readable.ok());
  EXPECT_EQ(readable.status().code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(readable.status().message().find("chmod 600"), std::string::npos)
      << readable.status().message();
  ASSERT_EQ(::chmod((prefix + ".curve.key").c_str(), 0600), 0);

  ASSERT_EQ(::chmod((prefix + ".curve.pub").c_str(), 0664), 0);
  auto writable = LoadCurvePublicFile(prefix + ".curve.pub");
  ASSERT_FALSE(writable.ok());
  EXPECT_NE(writable.status().message().find("chmod go-w"), std::string::npos)
      << writable.status().message();
  ASSERT_EQ(::chmod((prefix + ".curve.pub").c_str(), 0644), 0);

  const fs::path open_dir = dir / "open";
  fs::create_directories(open_dir);
  WriteFile(open_dir / "m.curve.key", ReadFile(prefix + ".curve.key"), 0600);
  WriteFile(open_dir / "m.curve.pub", ReadFile(prefix + ".curve.pub"), 0644);
  ASSERT_EQ(::chmod(open_dir.c_str(), 0777), 0);
  auto in_open_dir = LoadCurveSecretFile(open_dir / "m.curve.key");
  ASSERT_FALSE(in_open_dir.ok());
  EXPECT_NE(
      in_open_dir.status().message().find("directory " + open_dir.string() + " has mode 0777"),
      std::string::npos)
      << in_open_dir.status().message();
  EXPECT_FALSE(LoadCurvePublicFile(open_dir / "m.curve.pub").ok());
  ASSERT_EQ(::chmod(open_dir.c_str(), 0755), 0);
  EXPECT_TRUE(LoadCurveSecretFile(open_dir / "m.curve.key").ok());
  EXPECT_TRUE(LoadCurvePublicFile(open_dir / "m.curve.pub").ok());
}

}  // namespace
}  // namespace mirrorcast
