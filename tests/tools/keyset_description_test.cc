// `mirrorcast keys make` descriptions: every statement lands in the key
// set, paths are relative to the description, and mistakes are refused
// with the line they are on.
#include <gtest/gtest.h>

#include "core/crypto/keys.h"
#include "core/wire/keyset.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"
#include "tools/commands.h"

namespace mirrorcast::testing {
namespace {

constexpr int64_t kNow = 1'800'000'000;

class KeySetDescriptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"root", "a", "b", "c", "hb"}) {
      keys_.push_back(SigningKey::Generate().value());
      WriteFile(dir_ / (std::string(name) + ".pub"), keys_.back().public_key().ToFileText());
    }
  }
  Result<v1::KeySet> Parse(const std::string& text) {
    return ParseKeySetDescription(text, dir_.path(), kNow);
  }
  TempDir dir_{"mirrorcast-keys"};
  std::vector<SigningKey> keys_;
};

TEST_F(KeySetDescriptionTest, EveryStatementLands) {
  auto body = Parse(
      "# a comment\n"
      "version 7\n"
      "expires-days 10\n"
      "root root.pub\n"
      "publisher fedora-*,epel a.pub b.pub c.pub threshold=2   # two of three\n"
      "publisher * c.pub\n"
      "heartbeat hb.pub\n"
      "reset epel 41\n"
      "reset fedora-40 12 5\n"
      "comment rotated after the incident\n");
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  EXPECT_EQ(body->version(), 7u);
  EXPECT_EQ(body->expires_unix(), kNow + 10 * 86400);
  EXPECT_EQ(body->root().keys(0), keys_[0].public_key().raw());
  ASSERT_EQ(body->publishers_size(), 2);
  EXPECT_EQ(body->publishers(0).repos_size(), 2);
  EXPECT_EQ(body->publishers(0).signers().keys_size(), 3);
  EXPECT_EQ(body->publishers(0).signers().threshold(), 2u);
  EXPECT_EQ(body->publishers(1).repos(0), "*");
  EXPECT_EQ(body->heartbeat().keys(0), keys_[4].public_key().raw());
  ASSERT_EQ(body->resets_size(), 2);
  EXPECT_EQ(body->resets(0).since_version(), 7u) << "default: the set's own version";
  EXPECT_EQ(body->resets(1).floor(), 12u);
  EXPECT_EQ(body->resets(1).since_version(), 5u);
  EXPECT_EQ(body->comment(), "rotated after the incident");
}

TEST_F(KeySetDescriptionTest, MistakesAreRefusedWithTheirLine) {
  auto unknown = Parse("version 1\nexpires-days 1\nroot root.pub\nrooot a.pub\n");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("line 4"), std::string::npos);
  EXPECT_FALSE(Parse("expires-days 1\nroot root.pub\n").ok()) << "no version";
  EXPECT_FALSE(Parse("version 1\nroot root.pub\n").ok()) << "no expiry";
  EXPECT_FALSE(Parse("version 1\nexpires-days 1\n").ok()) << "no root";
  EXPECT_FALSE(Parse("version x\nexpires-days 1\nroot root.pub\n").ok());
  EXPECT_FALSE(Parse("version 1\nexpires-days 1\nroot missing.pub\n").ok());
  EXPECT_FALSE(Parse("version 1\nexpires-days 1\nroot root.pub\npublisher a/b a.pub\n").ok());
  EXPECT_FALSE(
      Parse("version 1\nexpires-days 1\nroot root.pub\npublisher * a.pub threshold=2\n").ok())
      << "a threshold above the keys listed";
  EXPECT_FALSE(Parse("version 2\nexpires-days 1\nroot root.pub\nreset demo 3 9\n").ok())
      << "a reset since a later version";
}

}  // namespace
}  // namespace mirrorcast::testing
