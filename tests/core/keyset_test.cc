// Key sets: decoding limits, the update rule (newer, unexpired, signed by
// the current root and by its own), thresholds (k of n, a key counts once)
// and KeyTrust's judgement of events and heartbeats with them.
#include "core/wire/keyset.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/crypto/sha256.h"
#include "core/wire/envelope.h"
#include "core/wire/key_trust.h"
#include "tests/support/temp_dir.h"

namespace mirrorcast {
namespace {

constexpr int64_t kNow = 1'800'000'000;

SigningKey NewKey() { return SigningKey::Generate().value(); }

void AddKeys(v1::KeyGroup* group, const std::vector<const SigningKey*>& keys, uint32_t k = 0) {
  for (const SigningKey* key : keys) group->add_keys(key->public_key().raw());
  group->set_threshold(k);
}

class KeySetTest : public ::testing::Test {
 protected:
  // Version `version` with root `roots` (threshold k), publisher1 for
  // "fedora-*" and "demo", heartbeat hb.
  v1::KeySet Body(uint64_t version, const std::vector<const SigningKey*>& roots, uint32_t k = 0) {
    v1::KeySet body;
    body.set_version(version);
    body.set_issued_unix(kNow - 10);
    body.set_expires_unix(kNow + 86400);
    AddKeys(body.mutable_root(), roots, k);
    v1::PublisherRule* rule = body.add_publishers();
    rule->add_repos("fedora-*");
    rule->add_repos("demo");
    AddKeys(rule->mutable_signers(), {&publisher1_});
    AddKeys(body.mutable_heartbeat(), {&heartbeat_});
    return body;
  }

  static std::string Signed(const v1::KeySet& body, const std::vector<const SigningKey*>& by) {
    return AddKeySetSignatures(MakeUnsignedKeySet(body), by).value();
  }

  static KeySet Decoded(const std::string& bytes) {
    auto set = KeySet::Decode(bytes);
    EXPECT_TRUE(set.ok()) << set.status().ToString();
    return std::move(set).value();
  }

  SignerGroup Anchor(const SigningKey& key) {
    SignerGroup g;
    g.keys.Add(key.public_key());
    return g;
  }

  static std::string Event(const std::string& repo, const std::vector<const SigningKey*>& by,
                           uint64_t keyset_version = 1) {
    v1::SignedPayload payload;
    v1::RepoChanged* ev = payload.mutable_repo_changed();
    ev->set_repo(repo);
    ev->set_serial(2);
    ev->set_previous_serial(1);
    ev->set_published_unix(kNow);
    ev->set_expires_unix(kNow + 60);
    ev->set_manifest_sha256(Sha256Of("m"));
    ev->set_keyset_version(keyset_version);
    return SealEnvelope(payload, by);
  }

  SigningKey root1_ = NewKey();
  SigningKey root2_ = NewKey();
  SigningKey root3_ = NewKey();
  SigningKey publisher1_ = NewKey();
  SigningKey publisher2_ = NewKey();
  SigningKey publisher3_ = NewKey();
  SigningKey heartbeat_ = NewKey();
};

TEST_F(KeySetTest, FirstSetSignedByTheRootIsAccepted) {
  const KeySet v1 = Decoded(Signed(Body(1, {&root1_}), {&root1_}));
  EXPECT_TRUE(CheckKeySetUpdate(nullptr, Anchor(root1_), v1, kNow).ok());
  EXPECT_EQ(v1.version(), 1u);
  EXPECT_EQ(v1.PublishersFor("fedora-40").size(), 1u);
  EXPECT_EQ(v1.PublishersFor("demo").size(), 1u);
  EXPECT_TRUE(v1.PublishersFor("debian").empty());
  EXPECT_TRUE(v1.PublishersFor("demo2").empty()) << "an exact name is not a prefix";
}

TEST_F(KeySetTest, NewerSetIsAcceptedOlderAndEqualAreRefused) {
  const KeySet v1 = Decoded(Signed(Body(1, {&root1_}), {&root1_}));
  const KeySet v2 = Decoded(Signed(Body(2, {&root1_}), {&root1_}));
  EXPECT_TRUE(CheckKeySetUpdate(&v1, Anchor(root1_), v2, kNow).ok());
  Status older = CheckKeySetUpdate(&v2, Anchor(root1_), v1, kNow);
  EXPECT_EQ(older.code(), Status::Code::kRejected);
  EXPECT_NE(older.message().find("not newer"), std::string::npos) << older.message();
  EXPECT_EQ(CheckKeySetUpdate(&v2, Anchor(root1_), v2, kNow).code(), Status::Code::kAlreadyExists);
  v1::KeySet other = Body(2, {&root1_});
  other.set_comment("same version, other content");
  EXPECT_EQ(CheckKeySetUpdate(&v2, Anchor(root1_), Decoded(Signed(other, {&root1_})), kNow).code(),
            Status::Code::kRejected);
}

TEST_F(KeySetTest, SetNotSignedByTheRootIsRefused) {
  // Signed by its own (new) root only, and by a publisher key: neither is
  // the root the verifier holds.
  const KeySet forged = Decoded(Signed(Body(1, {&root2_}), {&root2_, &publisher1_}));
  Status s = CheckKeySetUpdate(nullptr, Anchor(root1_), forged, kNow);
  EXPECT_EQ(s.code(), Status::Code::kRejected);
  EXPECT_NE(s.message().find("not signed by the current root"), std::string::npos) << s.message();
  const KeySet unsigned_set = Decoded(MakeUnsignedKeySet(Body(1, {&root1_})));
  EXPECT_FALSE(CheckKeySetUpdate(nullptr, Anchor(root1_), unsigned_set, kNow).ok());
}

TEST_F(KeySetTest, SignatureOverOtherBytesDoesNotCount) {
  std::string bytes = Signed(Body(1, {&root1_}), {&root1_});
  v1::SignedKeySet edited;
  ASSERT_TRUE(edited.ParseFromString(bytes));
  v1::KeySet body;
  ASSERT_TRUE(body.ParseFromString(edited.key_set()));
  body.set_expires_unix(body.expires_unix() + 1);  // the signature stays, the bytes change
  body.SerializeToString(edited.mutable_key_set());
  const KeySet tampered = Decoded(edited.SerializeAsString());
  EXPECT_EQ(tampered.SignedBy(Anchor(root1_)), 0u);
  EXPECT_FALSE(CheckKeySetUpdate(nullptr, Anchor(root1_), tampered, kNow).ok());
}

TEST_F(KeySetTest, RootRotationNeedsTheOldAndTheNewRoot) {
  const KeySet v1 = Decoded(Signed(Body(1, {&root1_}), {&root1_}));
  const v1::KeySet rotated = Body(2, {&root2_});
  EXPECT_TRUE(
      CheckKeySetUpdate(&v1, Anchor(root1_), Decoded(Signed(rotated, {&root1_, &root2_})), kNow)
          .ok());
  Status old_only =
      CheckKeySetUpdate(&v1, Anchor(root1_), Decoded(Signed(rotated, {&root1_})), kNow);
  EXPECT_EQ(old_only.code(), Status::Code::kRejected);
  EXPECT_NE(old_only.message().find("names a root that did not sign it"), std::string::npos)
      << old_only.message();
  Status new_only =
      CheckKeySetUpdate(&v1, Anchor(root1_), Decoded(Signed(rotated, {&root2_})), kNow);
  EXPECT_EQ(new_only.code(), Status::Code::kRejected);
  EXPECT_NE(new_only.message().find("not signed by the current root"), std::string::npos);
  // After the rotation, the old root alone signs nothing.
  const KeySet v2 = Decoded(Signed(rotated, {&root1_, &root2_}));
  EXPECT_FALSE(
      CheckKeySetUpdate(&v2, Anchor(root1_), Decoded(Signed(Body(3, {&root2_}), {&root1_})), kNow)
          .ok());
  EXPECT_TRUE(
      CheckKeySetUpdate(&v2, Anchor(root1_), Decoded(Signed(Body(3, {&root2_}), {&root2_})), kNow)
          .ok());
}

TEST_F(KeySetTest, RootThresholdTwoOfThree) {
  const std::vector<const SigningKey*> roots = {&root1_, &root2_, &root3_};
  const KeySet v1 = Decoded(Signed(Body(1, roots, 2), {&root1_, &root2_}));
  SignerGroup none;
  EXPECT_TRUE(
      CheckKeySetUpdate(&v1, none, Decoded(Signed(Body(2, roots, 2), {&root2_, &root3_})), kNow)
          .ok());
  Status one = CheckKeySetUpdate(&v1, none, Decoded(Signed(Body(2, roots, 2), {&root3_})), kNow);
  EXPECT_EQ(one.code(), Status::Code::kRejected);
  EXPECT_NE(one.message().find("1 of the 2 required"), std::string::npos) << one.message();

  // The same key's signature twice counts once.
  std::string bytes = Signed(Body(2, roots, 2), {&root3_});
  v1::SignedKeySet twice;
  ASSERT_TRUE(twice.ParseFromString(bytes));
  *twice.add_signatures() = twice.signatures(0);
  const KeySet doubled = Decoded(twice.SerializeAsString());
  EXPECT_EQ(doubled.signed_set().signatures_size(), 2);
  EXPECT_EQ(doubled.SignedBy(v1.root()), 1u);
  EXPECT_FALSE(CheckKeySetUpdate(&v1, none, doubled, kNow).ok());
  // AddKeySetSignatures does not add a second signature by the same key.
  EXPECT_EQ(Decoded(AddKeySetSignatures(bytes, {&root3_}).value()).signed_set().signatures_size(),
            1);
}

TEST_F(KeySetTest, ExpiredSetIsRefused) {
  v1::KeySet body = Body(1, {&root1_});
  body.set_expires_unix(kNow - 1);
  body.set_issued_unix(kNow - 100);
  Status s = CheckKeySetUpdate(nullptr, Anchor(root1_), Decoded(Signed(body, {&root1_})), kNow);
  EXPECT_EQ(s.code(), Status::Code::kRejected);
  EXPECT_NE(s.message().find("expired"), std::string::npos) << s.message();
  body.set_expires_unix(0);
  EXPECT_FALSE(KeySet::Decode(Signed(body, {&root1_})).ok()) << "a key set must expire";
}

TEST_F(KeySetTest, DecodeBoundsEverything) {
  EXPECT_FALSE(KeySet::Decode("not a key set").ok());
  EXPECT_FALSE(KeySet::Decode(std::string(kMaxKeySetBytes + 1, 'x')).ok());
  v1::KeySet body = Body(1, {&root1_});
  body.mutable_root()->set_threshold(2);  // more than its keys
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
  body = Body(1, {&root1_});
  body.mutable_root()->add_keys("short");
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
  body = Body(1, {&root1_});
  body.mutable_root()->add_keys(root1_.public_key().raw());  // listed twice
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
  body = Body(1, {});
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok()) << "no root";
  body = Body(0, {&root1_});
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok()) << "version 0";
  body = Body(1, {&root1_});
  body.mutable_publishers(0)->add_repos("../etc");
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
  body = Body(1, {&root1_});
  v1::SerialReset* reset = body.add_resets();
  reset->set_repo("demo");
  reset->set_floor(3);
  reset->set_since_version(2);  // later than the set itself
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
  reset->set_since_version(1);
  EXPECT_TRUE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
  *body.add_resets() = *reset;  // twice for one repo
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
  body = Body(1, {&root1_});
  for (int i = 0; i <= kMaxKeySetRules; ++i) *body.add_publishers() = body.publishers(0);
  EXPECT_FALSE(KeySet::Decode(MakeUnsignedKeySet(body)).ok());
}

TEST(RepoPatternTest, Matching) {
  EXPECT_TRUE(RepoPatternMatches("*", "anything"));
  EXPECT_TRUE(RepoPatternMatches("fedora-*", "fedora-40"));
  EXPECT_FALSE(RepoPatternMatches("fedora-*", "fedora"));
  EXPECT_TRUE(RepoPatternMatches("demo", "demo"));
  EXPECT_FALSE(RepoPatternMatches("demo", "demo-2"));
  EXPECT_TRUE(ValidateRepoPattern("fedora-*").ok());
  EXPECT_FALSE(ValidateRepoPattern("a/b").ok());
  EXPECT_FALSE(ValidateRepoPattern("").ok());
}

class KeyTrustTest : public KeySetTest {
 protected:
  KeyTrust Trust(const std::string& set_bytes) {
    TrustStore roots;
    roots.Add(root1_.public_key());
    KeyTrust trust = KeyTrust::Rooted(std::move(roots));
    auto set = trust.Check(set_bytes, kNow);
    EXPECT_TRUE(set.ok()) << set.status().ToString();
    trust.Adopt(std::move(set).value());
    return trust;
  }
};

TEST_F(KeyTrustTest, NothingIsAcceptedBeforeAKeySet) {
  TrustStore roots;
  roots.Add(root1_.public_key());
  KeyTrust trust = KeyTrust::Rooted(std::move(roots));
  auto opened = trust.OpenEvent(Event("demo", {&publisher1_}), kNow);
  EXPECT_FALSE(opened.ok());
  EXPECT_NE(opened.status().message().find("no key set yet"), std::string::npos);
  // The root key itself signs key sets, not events.
  EXPECT_FALSE(trust.OpenEvent(Event("demo", {&root1_}), kNow).ok());
}

TEST_F(KeyTrustTest, EventsOfTheRepoRulesAreAcceptedRemovedKeyIsRefused) {
  KeyTrust trust = Trust(Signed(Body(1, {&root1_}), {&root1_}));
  EXPECT_TRUE(trust.OpenEvent(Event("fedora-40", {&publisher1_}), kNow).ok());
  auto other_repo = trust.OpenEvent(Event("debian", {&publisher1_}), kNow);
  EXPECT_FALSE(other_repo.ok());
  EXPECT_NE(other_repo.status().message().find("names no publisher for repo"), std::string::npos)
      << other_repo.status().message();

  // Version 2 replaces publisher1 by publisher2.
  v1::KeySet body = Body(2, {&root1_});
  body.mutable_publishers(0)->mutable_signers()->clear_keys();
  AddKeys(body.mutable_publishers(0)->mutable_signers(), {&publisher2_});
  auto v2 = trust.Check(Signed(body, {&root1_}), kNow);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  trust.Adopt(std::move(v2).value());
  auto revoked = trust.OpenEvent(Event("demo", {&publisher1_}, 1), kNow);
  EXPECT_FALSE(revoked.ok());
  EXPECT_NE(revoked.status().message().find(publisher1_.public_key().key_id() +
                                            " is not in key set version 2 (revoked"),
            std::string::npos)
      << revoked.status().message();
  EXPECT_TRUE(trust.OpenEvent(Event("demo", {&publisher2_}, 2), kNow).ok());
  auto ahead = trust.OpenEvent(Event("demo", {&publisher2_}, 3), kNow);
  EXPECT_FALSE(ahead.ok());
  EXPECT_NE(ahead.status().message().find("newer than this one's 2"), std::string::npos);
  // Expired key set: nothing is accepted until a new one arrives.
  EXPECT_FALSE(trust.OpenEvent(Event("demo", {&publisher2_}, 2), kNow + 2 * 86400).ok());
}

TEST_F(KeyTrustTest, PublisherThresholdTwoOfThree) {
  v1::KeySet body = Body(1, {&root1_});
  body.mutable_publishers(0)->mutable_signers()->clear_keys();
  AddKeys(body.mutable_publishers(0)->mutable_signers(), {&publisher1_, &publisher2_, &publisher3_},
          2);
  KeyTrust trust = Trust(Signed(body, {&root1_}));
  EXPECT_TRUE(trust.OpenEvent(Event("demo", {&publisher1_, &publisher3_}), kNow).ok());
  auto one = trust.OpenEvent(Event("demo", {&publisher2_}), kNow);
  EXPECT_FALSE(one.ok());
  // The same key twice: one signer.
  auto twice = trust.OpenEvent(Event("demo", {&publisher2_, &publisher2_}), kNow);
  EXPECT_FALSE(twice.ok()) << "a key that signs twice counts once";
  // A trusted cosignature by a stranger does not help.
  SigningKey stranger = NewKey();
  EXPECT_FALSE(trust.OpenEvent(Event("demo", {&publisher2_, &stranger}), kNow).ok());
}

TEST_F(KeyTrustTest, HeartbeatsNeedTheHeartbeatKey) {
  KeyTrust trust = Trust(Signed(Body(1, {&root1_}), {&root1_}));
  v1::SignedPayload payload;
  payload.mutable_heartbeat()->set_issued_unix(kNow);
  payload.mutable_heartbeat()->set_expires_unix(kNow + 30);
  payload.mutable_heartbeat()->set_keyset_version(1);
  EXPECT_TRUE(trust.OpenHeartbeat(SealEnvelope(payload, heartbeat_), kNow).ok());
  EXPECT_FALSE(trust.OpenHeartbeat(SealEnvelope(payload, publisher1_), kNow).ok());
  EXPECT_TRUE(trust.IsHeartbeatKey(heartbeat_.public_key().key_id()));
  EXPECT_FALSE(trust.IsEventKey(heartbeat_.public_key().key_id()));
  EXPECT_TRUE(trust.HasHeartbeatKeys());
}

TEST_F(KeyTrustTest, StoredSetMustBeSignedByItsOwnRoot) {
  TrustStore roots;
  roots.Add(root1_.public_key());
  KeyTrust trust = KeyTrust::Rooted(std::move(roots));
  EXPECT_FALSE(trust.AdoptStored(MakeUnsignedKeySet(Body(3, {&root1_}))).ok());
  EXPECT_TRUE(trust.AdoptStored(Signed(Body(3, {&root2_}), {&root2_})).ok());
  EXPECT_EQ(trust.version(), 3u);
  // An older one is refused against the stored one.
  EXPECT_EQ(trust.Check(Signed(Body(2, {&root2_}), {&root2_}), kNow).status().code(),
            Status::Code::kRejected);
}

TEST(KeyTrustFixedTest, FixedKeysKeepTheirMeaning) {
  SigningKey origin = NewKey();
  TrustStore events;
  events.Add(origin.public_key());
  KeyTrust trust = KeyTrust::Fixed(std::move(events));
  v1::SignedPayload payload;
  v1::RepoChanged* ev = payload.mutable_repo_changed();
  ev->set_repo("anything");
  EXPECT_TRUE(trust.OpenEvent(SealEnvelope(payload, origin), kNow).ok());
  EXPECT_FALSE(trust.rooted());
  EXPECT_EQ(trust.Check("x", kNow).status().code(), Status::Code::kFailedPrecondition);
  SigningKey other = NewKey();
  auto refused = trust.OpenEvent(SealEnvelope(payload, other), kNow);
  EXPECT_NE(refused.status().message().find("unknown signing key"), std::string::npos);
}

// SIGHUP: the same files read again. Rooted mode keeps the adopted key set
// (a reload must not forget a rotation); a bad file is an error and the
// caller keeps what is in force.
TEST_F(KeyTrustTest, ReloadKeepsTheAdoptedKeySetAndRefusesABadFile) {
  testing::TempDir dir;
  ASSERT_TRUE(root1_.SaveFiles((dir.path() / "root").string()).ok());
  const std::vector<std::filesystem::path> root_file{dir.path() / "root.pub"};
  KeyTrust trust = Trust(Signed(Body(1, {&root1_}), {&root1_}));
  auto reloaded = ReloadKeyTrust(trust, {}, {}, root_file);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status().ToString();
  EXPECT_EQ(reloaded->version(), 1u);
  EXPECT_TRUE(reloaded->OpenEvent(Event("demo", {&publisher1_}), kNow).ok());

  const std::vector<std::filesystem::path> missing{dir.path() / "missing.pub"};
  EXPECT_FALSE(ReloadKeyTrust(trust, {}, {}, missing).ok());
}

TEST(KeyTrustFixedTest, ReloadReadsTheKeyFilesAgain) {
  testing::TempDir dir;
  SigningKey first = NewKey();
  SigningKey second = NewKey();
  ASSERT_TRUE(first.SaveFiles((dir.path() / "first").string()).ok());
  ASSERT_TRUE(second.SaveFiles((dir.path() / "second").string()).ok());
  auto trust = LoadKeyTrust({dir.path() / "first.pub"}, {}, {});
  ASSERT_TRUE(trust.ok()) << trust.status().ToString();
  std::filesystem::copy_file(dir.path() / "second.pub", dir.path() / "first.pub",
                             std::filesystem::copy_options::overwrite_existing);
  auto reloaded = ReloadKeyTrust(*trust, {dir.path() / "first.pub"}, {}, {});
  ASSERT_TRUE(reloaded.ok()) << reloaded.status().ToString();
  v1::SignedPayload payload;
  payload.mutable_repo_changed()->set_repo("demo");
  EXPECT_TRUE(reloaded->OpenEvent(SealEnvelope(payload, second), kNow).ok());
  EXPECT_FALSE(reloaded->OpenEvent(SealEnvelope(payload, first), kNow).ok());
}

TEST(EnvelopeCosignTest, CosignaturesAreCountedOncePerKey) {
  SigningKey a = NewKey();
  SigningKey b = NewKey();
  TrustStore trust;
  trust.Add(a.public_key());
  trust.Add(b.public_key());
  v1::SignedPayload payload;
  payload.mutable_heartbeat()->set_issued_unix(kNow);
  auto both = OpenEnvelopeSignedBy(SealEnvelope(payload, {&a, &b}), trust, 2);
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_EQ(both->signers.size(), 2u);
  EXPECT_FALSE(OpenEnvelopeSignedBy(SealEnvelope(payload, {&a, &a}), trust, 2).ok());
  EXPECT_FALSE(OpenEnvelopeSignedBy(SealEnvelope(payload, {&a}), trust, 2).ok());
  // A cosignature over other bytes is no signature.
  v1::Envelope env;
  ASSERT_TRUE(env.ParseFromString(SealEnvelope(payload, {&a, &b})));
  env.mutable_cosignatures(0)->set_signature(std::string(64, '\0'));
  EXPECT_FALSE(OpenEnvelopeSignedBy(env.SerializeAsString(), trust, 2).ok());
  EXPECT_TRUE(OpenEnvelopeSignedBy(env.SerializeAsString(), trust, 1).ok());
}

}  // namespace
}  // namespace mirrorcast
