// The allow-list parser, the User-Id it gives a connection, and the role
// tables (core/net/allow_list.h).
#include "core/net/allow_list.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>

#include "core/net/curve.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

namespace fs = std::filesystem;

std::string NewKey() {
  auto keys = GenerateCurveKeyPair();
  EXPECT_TRUE(keys.ok());
  return keys->public_z85;
}

// Key files by name, without a disk.
struct FakeKeyFiles {
  std::map<std::string, std::string> files;
  AllowList::KeyFileReader Reader() {
    return [this](const fs::path& path) -> Result<std::string> {
      auto it = files.find(path.string());
      if (it == files.end()) return Status::NotFound("no such file " + path.string());
      return it->second;
    };
  }
};

Result<AllowList> ParseText(const std::string& text, FakeKeyFiles* files = nullptr) {
  FakeKeyFiles none;
  return AllowList::Parse(text, "allow.list", "/etc/mirrorcast", (files ? files : &none)->Reader());
}

void ExpectError(const std::string& text, const std::string& where, const std::string& what) {
  auto list = ParseText(text);
  ASSERT_FALSE(list.ok()) << text;
  EXPECT_EQ(list.status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(list.status().message().rfind(where, 0), 0u) << list.status().message();
  EXPECT_NE(list.status().message().find(what), std::string::npos) << list.status().message();
}

TEST(AllowListTest, ParsesRolesNamesKeysCommentsAndKeyFiles) {
  const std::string a = NewKey(), b = NewKey(), c = NewKey(), d = NewKey();
  FakeKeyFiles files;
  files.files["/etc/mirrorcast/keys/mirror-b.curve.pub"] = b;
  files.files["/abs/relay.curve.pub"] = c;
  const std::string text =
      "# origin broker allow-list\n"
      "\n"
      "publish release-host " +
      a +
      "\n"
      "   # an indented comment\n"
      "mirror\tmirror-b   keys/mirror-b.curve.pub\r\n"
      "relay tier1.eu /abs/relay.curve.pub\n"
      "admin ops@example.org:2 " +
      d;  // no newline at the end
  auto list = ParseText(text, &files);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->size(), 4u);
  const AllowList::Entry* pub = list->Find(a);
  ASSERT_NE(pub, nullptr);
  EXPECT_EQ(pub->identity.role, PeerRole::kPublish);
  EXPECT_EQ(pub->identity.name, "release-host");
  EXPECT_EQ(pub->line, 3);
  ASSERT_NE(list->Find(b), nullptr);
  EXPECT_EQ(list->Find(b)->identity.role, PeerRole::kMirror);
  EXPECT_EQ(list->Find(b)->identity.name, "mirror-b");
  EXPECT_EQ(list->Find(b)->line, 5);
  ASSERT_NE(list->Find(c), nullptr);
  EXPECT_EQ(list->Find(c)->identity.role, PeerRole::kRelay);
  ASSERT_NE(list->Find(d), nullptr);
  EXPECT_EQ(list->Find(d)->identity.name, "ops@example.org:2");
  EXPECT_EQ(list->CountRole(PeerRole::kMirror), 1u);
  EXPECT_EQ(list->Find(NewKey()), nullptr);
  EXPECT_TRUE(ParseText("").ok());
  EXPECT_TRUE(ParseText("# nothing\n\n").ok());
}

TEST(AllowListTest, EveryBadLineIsRefusedWithItsLineNumber) {
  const std::string k = NewKey();
  ExpectError("publish p " + k + "\nowner x " + k + "\n", "allow.list:2: ", "unknown role 'owner'");
  ExpectError("\n\nmirror bad/name " + k + "\n", "allow.list:3: ", "bad name");
  ExpectError("mirror m\n", "allow.list:1: ", "got 2 fields");
  ExpectError("mirror m " + k + " # trailing comment\n", "allow.list:1: ", "or more fields");
  ExpectError("mirror m " + k + "\nmirror n " + k + "\n",
              "allow.list:2: ", "already listed on line 1");
  ExpectError("mirror m missing.curve.pub\n",
              "allow.list:1: ", "neither 40 Z85 characters nor a readable CURVE public key file");
  ExpectError("mirror m " + k.substr(1) + "\n", "allow.list:1: ", "neither 40 Z85");
  ExpectError("mirror m\x01 " + k + "\n", "allow.list:1: ", "control character");
  ExpectError("mirror " + std::string(129, 'n') + " " + k + "\n", "allow.list:1: ", "bad name");
  ExpectError("Mirror m " + k + "\n", "allow.list:1: ", "unknown role");
}

TEST(AllowListTest, AFileOthersCanWriteIsRefusedAndRelativeKeyFilesAreFound) {
  testing::TempDir dir;
  auto keys = GenerateCurveKeyPair();
  ASSERT_TRUE(keys.ok());
  ASSERT_TRUE(SaveCurveKeyFiles(*keys, (dir / "m1").string()).ok());
  testing::WriteFile(dir / "allow.list", "mirror m1 m1.curve.pub\n", 0644);
  auto list = AllowList::LoadFile(dir / "allow.list");
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_NE(list->Find(keys->public_z85), nullptr);

  ASSERT_EQ(::chmod((dir / "allow.list").c_str(), 0666), 0);
  auto open = AllowList::LoadFile(dir / "allow.list");
  ASSERT_FALSE(open.ok());
  EXPECT_EQ(open.status().code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(open.status().message().find("chmod go-w"), std::string::npos)
      << open.status().message();
  ASSERT_EQ(::chmod((dir / "allow.list").c_str(), 0644), 0);
  // A key file named in the list is checked the same way.
  ASSERT_EQ(::chmod((dir / "m1.curve.pub").c_str(), 0666), 0);
  auto loose_key = AllowList::LoadFile(dir / "allow.list");
  ASSERT_FALSE(loose_key.ok());
  EXPECT_NE(loose_key.status().message().find("allow.list:1: "), std::string::npos)
      << loose_key.status().message();
}

TEST(AllowListTest, UserIdsReadBackAndOnlyTheCurrentListVouchesForThem) {
  const std::string a = NewKey(), b = NewKey();
  auto first = ParseText("mirror m1 " + a + "\nadmin ops " + b + "\n");
  ASSERT_TRUE(first.ok());
  const std::string user_id = ToUserId(first->Find(a)->identity);
  EXPECT_EQ(user_id, "mirror m1 " + a);
  auto back = ParseUserId(user_id);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->role, PeerRole::kMirror);
  EXPECT_EQ(back->name, "m1");
  EXPECT_EQ(back->public_z85, a);
  EXPECT_FALSE(ParseUserId("mirror m1").has_value());
  EXPECT_FALSE(ParseUserId("root m1 " + a).has_value());
  EXPECT_FALSE(ParseUserId("mirror m1 short").has_value());
  EXPECT_FALSE(ParseUserId("").has_value());

  CurrentAllowList current(std::make_shared<const AllowList>(std::move(*first)), "allow.list");
  EXPECT_TRUE(current.Check(user_id).has_value());
  // Same key listed under another name, or removed: no longer vouched for.
  auto renamed = ParseText("mirror m2 " + a + "\n");
  ASSERT_TRUE(renamed.ok());
  current.Replace(std::make_shared<const AllowList>(std::move(*renamed)));
  EXPECT_FALSE(current.Check(user_id).has_value());
  EXPECT_TRUE(current.Check("mirror m2 " + a).has_value());
  auto removed = ParseText("admin ops " + b + "\n");
  ASSERT_TRUE(removed.ok());
  current.Replace(std::make_shared<const AllowList>(std::move(*removed)));
  EXPECT_FALSE(current.Check("mirror m2 " + a).has_value());
  EXPECT_TRUE(current.Check("admin ops " + b).has_value());
}

TEST(AllowListTest, RolesMayWhatTheProtocolSays) {
  using A = ControlAction;
  for (A a : {A::kHello, A::kPublish, A::kPutObjects, A::kLinked, A::kEvents}) {
    EXPECT_TRUE(RoleMayControl(PeerRole::kPublish, a));
  }
  EXPECT_FALSE(RoleMayControl(PeerRole::kPublish, A::kAck));
  EXPECT_FALSE(RoleMayControl(PeerRole::kPublish, A::kStatus));
  for (PeerRole r : {PeerRole::kMirror, PeerRole::kRelay}) {
    for (A a : {A::kHello, A::kEvents, A::kAck}) EXPECT_TRUE(RoleMayControl(r, a));
    for (A a : {A::kPublish, A::kPutObjects, A::kLinked, A::kStatus}) {
      EXPECT_FALSE(RoleMayControl(r, a));
    }
  }
  EXPECT_TRUE(RoleMayControl(PeerRole::kAdmin, A::kStatus));
  EXPECT_TRUE(RoleMayControl(PeerRole::kAdmin, A::kHello));
  for (A a : {A::kPublish, A::kPutObjects, A::kLinked, A::kEvents, A::kAck}) {
    EXPECT_FALSE(RoleMayControl(PeerRole::kAdmin, a));
  }
  for (PeerRole r : {PeerRole::kPublish, PeerRole::kMirror, PeerRole::kRelay, PeerRole::kAdmin}) {
    EXPECT_TRUE(RoleMayConnect(r, kZapDomainControl));
    EXPECT_FALSE(RoleMayConnect(r, "other"));
  }
  EXPECT_TRUE(RoleMayConnect(PeerRole::kMirror, kZapDomainEvents));
  EXPECT_TRUE(RoleMayConnect(PeerRole::kRelay, kZapDomainEvents));
  EXPECT_FALSE(RoleMayConnect(PeerRole::kPublish, kZapDomainEvents));
  EXPECT_FALSE(RoleMayConnect(PeerRole::kAdmin, kZapDomainEvents));
  EXPECT_TRUE(RoleMayConnect(PeerRole::kPublish, kZapDomainContent));
  EXPECT_TRUE(RoleMayConnect(PeerRole::kMirror, kZapDomainContent));
  EXPECT_FALSE(RoleMayConnect(PeerRole::kAdmin, kZapDomainContent));
}

}  // namespace
}  // namespace mirrorcast
