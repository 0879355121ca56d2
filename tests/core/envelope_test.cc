#include "core/wire/envelope.h"

#include <gtest/gtest.h>

#include <algorithm>

#include <random>
#include <string>
#include <vector>

#include "core/crypto/sha256.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

using testing::RandomBytes;

constexpr int64_t kNow = 1'800'000'000;

SigningKey NewKey() {
  auto key = SigningKey::Generate();
  EXPECT_TRUE(key.ok()) << key.status().ToString();
  return std::move(key).value();
}

v1::FileEntry FileEntry(const std::string& path, const std::string& content) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_FILE);
  e.set_size(content.size());
  e.set_sha256(Sha256Of(content));
  e.set_mode(0644);
  e.set_mtime(kNow - 100);
  return e;
}

v1::RepoChanged ValidEvent() {
  v1::RepoChanged ev;
  ev.set_repo("fedora-40_x86.64");
  ev.set_serial(8);
  ev.set_previous_serial(7);
  ev.set_published_unix(kNow - 10);
  ev.set_expires_unix(kNow + 3600);
  ev.set_manifest_sha256(Sha256Of("manifest"));
  ev.set_manifest_entries(3);

  v1::Change* added = ev.add_changes();
  added->set_kind(v1::CHANGE_ADDED);
  *added->mutable_entry() = FileEntry("Packages/a/app-1.0.rpm", "new package");

  v1::Change* modified = ev.add_changes();
  modified->set_kind(v1::CHANGE_MODIFIED);
  *modified->mutable_entry() = FileEntry("repodata/repomd.xml", "new metadata");
  modified->set_previous_sha256(Sha256Of("old metadata"));

  v1::Change* deleted = ev.add_changes();
  deleted->set_kind(v1::CHANGE_DELETED);
  deleted->mutable_entry()->set_path("srpms/app-0.9.src.rpm");
  deleted->mutable_entry()->set_kind(v1::ENTRY_FILE);
  ev.set_change_count(3);
  return ev;
}

// Changes in path order with their count, as a publisher signs them.
void Normalize(v1::RepoChanged* ev) {
  std::sort(
      ev->mutable_changes()->begin(), ev->mutable_changes()->end(),
      [](const v1::Change& a, const v1::Change& b) { return a.entry().path() < b.entry().path(); });
  ev->set_change_count(static_cast<uint64_t>(ev->changes_size()));
}

v1::SignedPayload PayloadOf(const v1::RepoChanged& ev) {
  v1::SignedPayload p;
  *p.mutable_repo_changed() = ev;
  return p;
}

class EnvelopeTest : public ::testing::Test {
 protected:
  EnvelopeTest() : key_(NewKey()) { trust_.Add(key_.public_key()); }

  // Re-signs an Envelope whose payload bytes were edited, as a holder of
  // `key` could.
  std::string Resign(v1::Envelope env, const SigningKey& key) {
    std::string msg(kEnvelopeDomain);
    msg += env.payload();
    env.set_signature(key.Sign(msg));
    env.set_key_id(key.public_key().key_id());
    return env.SerializeAsString();
  }

  v1::Envelope Parse(const std::string& bytes) {
    v1::Envelope env;
    EXPECT_TRUE(env.ParseFromString(bytes));
    return env;
  }

  SigningKey key_;
  TrustStore trust_;
};

TEST_F(EnvelopeTest, SealOpenRoundTrip) {
  const v1::RepoChanged ev = ValidEvent();
  const std::string bytes = SealEnvelope(PayloadOf(ev), key_);
  auto opened = OpenEnvelope(bytes, trust_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->key_id, key_.public_key().key_id());
  EXPECT_EQ(opened->payload.protocol_version(), kProtocolVersion);
  ASSERT_TRUE(opened->payload.has_repo_changed());
  EXPECT_EQ(opened->payload.repo_changed().SerializeAsString(), ev.SerializeAsString());
  EXPECT_TRUE(CheckRepoChanged(opened->payload.repo_changed(), kNow).ok());

  // The envelope carries the version and the signature over domain || payload.
  v1::Envelope env = Parse(bytes);
  EXPECT_EQ(env.protocol_version(), kProtocolVersion);
  EXPECT_EQ(env.signature().size(), kEd25519SignatureSize);
  EXPECT_TRUE(
      key_.public_key().Verify(std::string(kEnvelopeDomain) + env.payload(), env.signature()));
  // Without the domain prefix the signature does not verify.
  EXPECT_FALSE(key_.public_key().Verify(env.payload(), env.signature()));
}

TEST_F(EnvelopeTest, OtherBodiesRoundTrip) {
  v1::SignedPayload hb;
  hb.mutable_heartbeat()->set_origin("origin-1");
  hb.mutable_heartbeat()->set_expires_unix(kNow + 60);
  auto opened = OpenEnvelope(SealEnvelope(hb, key_), trust_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->payload.heartbeat().origin(), "origin-1");

  v1::SignedPayload recall;
  recall.mutable_recall()->set_repo("debian");
  recall.mutable_recall()->set_target_serial(3);
  opened = OpenEnvelope(SealEnvelope(recall, key_), trust_);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->payload.recall().target_serial(), 3u);
}

TEST_F(EnvelopeTest, FlippedSignatureByteRejected) {
  const std::string bytes = SealEnvelope(PayloadOf(ValidEvent()), key_);
  for (int i = 0; i < static_cast<int>(kEd25519SignatureSize); ++i) {
    v1::Envelope env = Parse(bytes);
    std::string sig = env.signature();
    sig[i] = static_cast<char>(sig[i] ^ 0x01);
    env.set_signature(sig);
    auto opened = OpenEnvelope(env.SerializeAsString(), trust_);
    ASSERT_FALSE(opened.ok()) << "byte " << i;
    EXPECT_EQ(opened.status().code(), Status::Code::kRejected);
    EXPECT_NE(opened.status().message().find("bad signature"), std::string::npos);
  }
}

TEST_F(EnvelopeTest, MissingOrShortSignatureRejected) {
  v1::Envelope env = Parse(SealEnvelope(PayloadOf(ValidEvent()), key_));
  env.clear_signature();
  EXPECT_EQ(OpenEnvelope(env.SerializeAsString(), trust_).status().code(), Status::Code::kRejected);
  env.set_signature(std::string(63, 'x'));
  EXPECT_EQ(OpenEnvelope(env.SerializeAsString(), trust_).status().code(), Status::Code::kRejected);
}

TEST_F(EnvelopeTest, TamperedPayloadRejected) {
  v1::Envelope env = Parse(SealEnvelope(PayloadOf(ValidEvent()), key_));
  // A relay bumps the serial: the payload bytes change, the signature does not.
  v1::SignedPayload payload;
  ASSERT_TRUE(payload.ParseFromString(env.payload()));
  payload.mutable_repo_changed()->set_serial(9);
  env.set_payload(payload.SerializeAsString());
  auto opened = OpenEnvelope(env.SerializeAsString(), trust_);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kRejected);

  // Any single flipped payload byte is caught too.
  v1::Envelope original = Parse(SealEnvelope(PayloadOf(ValidEvent()), key_));
  for (size_t i = 0; i < original.payload().size(); ++i) {
    v1::Envelope e = original;
    std::string p = e.payload();
    p[i] = static_cast<char>(p[i] ^ 0x80);
    e.set_payload(p);
    EXPECT_FALSE(OpenEnvelope(e.SerializeAsString(), trust_).ok()) << "byte " << i;
  }
}

TEST_F(EnvelopeTest, UntrustedKeyRejected) {
  SigningKey stranger = NewKey();
  auto opened = OpenEnvelope(SealEnvelope(PayloadOf(ValidEvent()), stranger), trust_);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kRejected);
  EXPECT_NE(opened.status().message().find("unknown signing key " + stranger.public_key().key_id()),
            std::string::npos)
      << opened.status().message();

  // Claiming a trusted key id does not help the stranger.
  v1::Envelope env = Parse(SealEnvelope(PayloadOf(ValidEvent()), stranger));
  env.set_key_id(key_.public_key().key_id());
  opened = OpenEnvelope(env.SerializeAsString(), trust_);
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.status().message().find("bad signature"), std::string::npos);

  // An empty trust store trusts nobody.
  EXPECT_FALSE(OpenEnvelope(SealEnvelope(PayloadOf(ValidEvent()), key_), TrustStore()).ok());
}

TEST_F(EnvelopeTest, WrongProtocolVersionRejected) {
  // Envelope version.
  v1::Envelope env = Parse(SealEnvelope(PayloadOf(ValidEvent()), key_));
  env.set_protocol_version(kProtocolVersion + 1);
  auto opened = OpenEnvelope(env.SerializeAsString(), trust_);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kRejected);
  EXPECT_NE(opened.status().message().find("protocol version"), std::string::npos);

  // Payload version, correctly signed.
  v1::SignedPayload payload = PayloadOf(ValidEvent());
  payload.set_protocol_version(kProtocolVersion + 1);
  v1::Envelope env2;
  env2.set_protocol_version(kProtocolVersion);
  env2.set_payload(payload.SerializeAsString());
  opened = OpenEnvelope(Resign(env2, key_), trust_);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kRejected);
  EXPECT_NE(opened.status().message().find("protocol version"), std::string::npos);

  // Payload version 0 (unset).
  payload.clear_protocol_version();
  env2.set_payload(payload.SerializeAsString());
  EXPECT_FALSE(OpenEnvelope(Resign(env2, key_), trust_).ok());
}

TEST_F(EnvelopeTest, SignedGarbageOrEmptyPayloadRejected) {
  v1::Envelope env;
  env.set_protocol_version(kProtocolVersion);
  env.set_payload("\xff\xff\xff\xff garbage");
  auto opened = OpenEnvelope(Resign(env, key_), trust_);
  ASSERT_FALSE(opened.ok());

  // Parsable, versioned, but no body.
  v1::SignedPayload empty;
  empty.set_protocol_version(kProtocolVersion);
  env.set_payload(empty.SerializeAsString());
  opened = OpenEnvelope(Resign(env, key_), trust_);
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.status().message().find("body"), std::string::npos);
}

TEST_F(EnvelopeTest, OversizeRejectedBeforeParsing) {
  std::string huge(kMaxEnvelopeBytes + 1, '\0');
  auto opened = OpenEnvelope(huge, trust_);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kResourceExhausted);
}

TEST_F(EnvelopeTest, GarbageAndTruncationsNeverCrashOrPass) {
  const std::string bytes = SealEnvelope(PayloadOf(ValidEvent()), key_);
  ASSERT_TRUE(OpenEnvelope(bytes, trust_).ok());
  // Every strict prefix is refused: the signature covers the whole payload.
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(OpenEnvelope(std::string_view(bytes).substr(0, n), trust_).ok()) << n;
  }
  std::mt19937_64 rng(42);
  for (int i = 0; i < 3000; ++i) {
    const size_t size = rng() % 512;
    const std::string junk = RandomBytes(size, rng());
    EXPECT_FALSE(OpenEnvelope(junk, trust_).ok());
  }
  // Random byte edits of a valid envelope.
  for (int i = 0; i < 3000; ++i) {
    std::string edited = bytes;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      edited[rng() % edited.size()] = static_cast<char>(rng());
    }
    if (edited == bytes) continue;
    auto opened = OpenEnvelope(edited, trust_);
    if (opened.ok()) {
      // Only an edit outside the signed bytes may survive (an unknown field
      // in the outer envelope); the payload must be exactly the signed one.
      EXPECT_EQ(opened->payload.repo_changed().SerializeAsString(),
                ValidEvent().SerializeAsString());
    }
  }
}

// ---------------------------------------------------------------------------
// CheckRepoChanged

TEST(CheckRepoChangedTest, AcceptsValidEvent) {
  Status st = CheckRepoChanged(ValidEvent(), kNow);
  EXPECT_TRUE(st.ok()) << st.ToString();
  // Exactly at the expiry second is still valid.
  EXPECT_TRUE(CheckRepoChanged(ValidEvent(), kNow + 3600).ok());
  // A symlink and a directory are fine too.
  v1::RepoChanged ev = ValidEvent();
  v1::Change* link = ev.add_changes();
  link->set_kind(v1::CHANGE_ADDED);
  link->mutable_entry()->set_path("repodata/latest");
  link->mutable_entry()->set_kind(v1::ENTRY_SYMLINK);
  link->mutable_entry()->set_symlink_target("repomd.xml");
  v1::Change* dir = ev.add_changes();
  dir->set_kind(v1::CHANGE_ADDED);
  dir->mutable_entry()->set_path("Packages/b");
  dir->mutable_entry()->set_kind(v1::ENTRY_DIRECTORY);
  dir->mutable_entry()->set_mode(0755);
  Normalize(&ev);
  st = CheckRepoChanged(ev, kNow);
  EXPECT_TRUE(st.ok()) << st.ToString();

  // Too large to carry: none carried, only counted.
  v1::RepoChanged omitted = ValidEvent();
  omitted.clear_changes();
  omitted.set_changes_omitted(true);
  omitted.set_change_count(2000000);
  st = CheckRepoChanged(omitted, kNow);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST(CheckRepoChangedTest, RejectsChangesOutOfOrderMiscountedOrCarriedWhenOmitted) {
  v1::RepoChanged ev = ValidEvent();
  ev.mutable_changes()->SwapElements(0, 1);
  Status st = CheckRepoChanged(ev, kNow);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("out of path order"), std::string::npos) << st.message();

  ev = ValidEvent();
  ev.set_change_count(4);
  st = CheckRepoChanged(ev, kNow);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("counts 4"), std::string::npos) << st.message();

  ev = ValidEvent();
  ev.set_changes_omitted(true);
  st = CheckRepoChanged(ev, kNow);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("says are omitted"), std::string::npos) << st.message();
}

TEST(CheckRepoChangedTest, RejectsExpired) {
  Status st = CheckRepoChanged(ValidEvent(), kNow + 3601);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Status::Code::kRejected);
  EXPECT_NE(st.message().find("expired"), std::string::npos);
}

TEST(CheckRepoChangedTest, RejectsNoExpiryAndPublishTimesInTheFuture) {
  v1::RepoChanged never_expires = ValidEvent();
  never_expires.set_expires_unix(0);
  Status st = CheckRepoChanged(never_expires, kNow);
  EXPECT_EQ(st.code(), Status::Code::kRejected);
  EXPECT_NE(st.message().find("has no expiry time"), std::string::npos) << st.message();

  v1::RepoChanged future = ValidEvent();
  future.set_published_unix(kNow + kMaxClockSkewSeconds + 1);
  future.set_expires_unix(kNow + 7200);
  st = CheckRepoChanged(future, kNow);
  EXPECT_EQ(st.code(), Status::Code::kRejected);
  EXPECT_NE(st.message().find("in the future"), std::string::npos) << st.message();
  // A clock a little behind the publisher's is fine.
  future.set_published_unix(kNow + kMaxClockSkewSeconds);
  EXPECT_TRUE(CheckRepoChanged(future, kNow).ok());

  v1::RepoChanged backwards = ValidEvent();
  backwards.set_expires_unix(backwards.published_unix() - 1);
  st = CheckRepoChanged(backwards, kNow - 20);
  EXPECT_EQ(st.code(), Status::Code::kRejected);
  EXPECT_NE(st.message().find("before it was published"), std::string::npos) << st.message();
}

TEST(CheckRepoChangedTest, RejectsSerialNotAdvancing) {
  v1::RepoChanged ev = ValidEvent();
  ev.set_serial(7);
  EXPECT_EQ(CheckRepoChanged(ev, kNow).code(), Status::Code::kRejected);
  ev.set_serial(6);
  EXPECT_EQ(CheckRepoChanged(ev, kNow).code(), Status::Code::kRejected);
  ev.set_serial(0);
  ev.set_previous_serial(0);
  EXPECT_EQ(CheckRepoChanged(ev, kNow).code(), Status::Code::kRejected);
}

TEST(CheckRepoChangedTest, RecallNeedsAnEarlierSerialAndAOneLineReason) {
  v1::RepoChanged ev = ValidEvent();  // serial 8 after 7
  ev.set_recall_of(5);
  ev.set_recall_reason("broken builds in serial 7");
  EXPECT_TRUE(CheckRepoChanged(ev, kNow).ok());
  ev.set_recall_reason(std::string(kMaxRecallReasonBytes, 'x'));
  EXPECT_TRUE(CheckRepoChanged(ev, kNow).ok());

  auto refused = [&](const v1::RepoChanged& e, const std::string& fragment) {
    Status st = CheckRepoChanged(e, kNow);
    EXPECT_EQ(st.code(), Status::Code::kRejected) << fragment;
    EXPECT_NE(st.message().find(fragment), std::string::npos) << st.message();
  };
  v1::RepoChanged bad = ev;
  bad.set_recall_reason(std::string(kMaxRecallReasonBytes + 1, 'x'));
  refused(bad, "a recall reason must be 1-1024 bytes");
  bad.set_recall_reason("");
  refused(bad, "a recall reason must be 1-1024 bytes");
  bad.set_recall_reason("two\nlines");
  refused(bad, "control character");
  bad = ev;
  bad.set_recall_of(7);  // the serial it follows: nothing to go back to
  refused(bad, "recalls serial 7, which is not before the serial it follows (7)");
  bad.set_recall_of(9);
  refused(bad, "recalls serial 9");
  bad = ValidEvent();
  bad.set_recall_reason("not a recall");
  refused(bad, "carries a recall reason but is not a recall");
}

TEST(CheckRepoChangedTest, RejectsBadDigestLength) {
  for (size_t len : {0, 1, 31, 33, 64}) {
    v1::RepoChanged ev = ValidEvent();
    ev.set_manifest_sha256(std::string(len, 'x'));
    EXPECT_EQ(CheckRepoChanged(ev, kNow).code(), Status::Code::kRejected) << len;
  }
  v1::RepoChanged ev = ValidEvent();
  ev.mutable_changes(0)->mutable_entry()->set_sha256("short");
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());
  ev = ValidEvent();
  ev.mutable_changes(1)->set_previous_sha256(std::string(31, 'x'));
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());
}

TEST(CheckRepoChangedTest, RejectsUnsafePaths) {
  const std::string bad_paths[] = {
      "",
      "..",
      "../etc/passwd",
      "Packages/../../etc/passwd",
      "Packages/..",
      "/etc/passwd",
      "Packages\\..\\x",
      "a\\b",
      std::string("Packages/a\0.rpm", 16),
      "./x",
      "a//b",
      "a/",
      std::string(5000, 'a'),
  };
  for (const std::string& path : bad_paths) {
    for (int which = 0; which < 3; ++which) {
      v1::RepoChanged ev = ValidEvent();
      ev.mutable_changes(which)->mutable_entry()->set_path(path);
      Status st = CheckRepoChanged(ev, kNow);
      EXPECT_FALSE(st.ok()) << "path '" << path.substr(0, 40) << "' in change " << which;
      EXPECT_EQ(st.code(), Status::Code::kRejected);
    }
  }
}

TEST(CheckRepoChangedTest, RejectsSymlinkEscapingTheTree) {
  v1::RepoChanged ev = ValidEvent();
  v1::Change* link = ev.add_changes();
  link->set_kind(v1::CHANGE_ADDED);
  link->mutable_entry()->set_path("repodata/evil");
  link->mutable_entry()->set_kind(v1::ENTRY_SYMLINK);
  for (const char* target : {"../../etc/shadow", "/etc/shadow"}) {
    link->mutable_entry()->set_symlink_target(target);
    v1::RepoChanged sorted = ev;
    Normalize(&sorted);
    Status st = CheckRepoChanged(sorted, kNow);
    ASSERT_FALSE(st.ok()) << target;
    EXPECT_NE(st.message().find("repodata/evil"), std::string::npos) << st.message();
  }
  link->mutable_entry()->set_symlink_target("repomd.xml");
  Normalize(&ev);
  EXPECT_TRUE(CheckRepoChanged(ev, kNow).ok());
}

TEST(CheckRepoChangedTest, RejectsMalformedChanges) {
  v1::RepoChanged ev = ValidEvent();
  ev.mutable_changes(0)->set_kind(v1::CHANGE_KIND_UNSPECIFIED);
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());

  ev = ValidEvent();
  ev.mutable_changes(0)->set_kind(static_cast<v1::ChangeKind>(99));
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());

  ev = ValidEvent();
  ev.mutable_changes(0)->mutable_entry()->set_kind(v1::ENTRY_KIND_UNSPECIFIED);
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());

  ev = ValidEvent();
  ev.mutable_changes(2)->mutable_entry()->set_kind(v1::ENTRY_KIND_UNSPECIFIED);
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());

  // A deletion carries only its path and kind.
  ev = ValidEvent();
  ev.mutable_changes(2)->mutable_entry()->set_sha256(Sha256Of("x"));
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());

  // An addition has nothing it replaces.
  ev = ValidEvent();
  ev.mutable_changes(0)->set_previous_sha256(Sha256Of("x"));
  EXPECT_FALSE(CheckRepoChanged(ev, kNow).ok());

  // The same path twice is ambiguous.
  ev = ValidEvent();
  v1::Change first = ev.changes(0);
  ev.clear_changes();
  *ev.add_changes() = first;
  *ev.add_changes() = first;
  ev.set_change_count(2);
  Status st = CheckRepoChanged(ev, kNow);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("more than once"), std::string::npos) << st.message();
}

TEST(CheckRepoChangedTest, RejectsBadRepoNames) {
  for (const std::string& name :
       std::vector<std::string>{"", ".hidden", "a/b", "..", "a b", "a\\b", std::string(65, 'a'),
                                std::string("a\0b", 3), "caf\xc3\xa9"}) {
    v1::RepoChanged ev = ValidEvent();
    ev.set_repo(name);
    Status st = CheckRepoChanged(ev, kNow);
    EXPECT_EQ(st.code(), Status::Code::kRejected) << name;
    EXPECT_FALSE(ValidateRepoName(name).ok()) << name;
  }
}

TEST(ValidateRepoNameTest, AcceptsAllowedCharacters) {
  for (const std::string& name : std::vector<std::string>{
           "a", "fedora", "Debian-12", "ubuntu_22.04", "x.", "0", std::string(64, 'z')}) {
    EXPECT_TRUE(ValidateRepoName(name).ok()) << name;
  }
}

}  // namespace
}  // namespace mirrorcast
