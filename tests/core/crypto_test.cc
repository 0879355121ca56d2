#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <set>
#include <string>

#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

using testing::RandomBytes;
using testing::ReadFile;
using testing::TempDir;
namespace fs = std::filesystem;
using testing::WriteFile;

// ---------------------------------------------------------------------------
// SHA-256 and hex

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(ToHex(Sha256Of("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(ToHex(Sha256Of("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Of("abc").size(), kSha256Size);
}

TEST(Sha256Test, IncrementalMatchesOneShotAndResets) {
  const std::string data = RandomBytes(100000, 1);
  Sha256 h;
  h.Update(data.substr(0, 1));
  h.Update(data.substr(1, 4095));
  h.Update(data.substr(4096));
  EXPECT_EQ(h.Finish(), Sha256Of(data));
  // Finish resets the hasher.
  h.Update("abc");
  EXPECT_EQ(h.Finish(), Sha256Of("abc"));
}

TEST(Sha256Test, FileMatchesMemory) {
  TempDir dir;
  // Larger than the 1 MiB read buffer so several reads are combined.
  const std::string data = RandomBytes(3 * (1 << 20) + 17, 2);
  WriteFile(dir / "f", data);
  uint64_t bytes = 0;
  auto digest = Sha256File(dir / "f", &bytes);
  ASSERT_TRUE(digest.ok()) << digest.status().ToString();
  EXPECT_EQ(*digest, Sha256Of(data));
  EXPECT_EQ(bytes, data.size());

  WriteFile(dir / "empty", "");
  auto empty = Sha256File(dir / "empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, Sha256Of(""));
}

TEST(Sha256Test, MissingFileIsNotFound) {
  TempDir dir;
  auto digest = Sha256File(dir / "missing");
  ASSERT_FALSE(digest.ok());
  EXPECT_EQ(digest.status().code(), Status::Code::kNotFound);
}

TEST(HexTest, RoundTrip) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  const std::string hex = ToHex(all);
  EXPECT_EQ(hex.size(), 512u);
  EXPECT_EQ(hex.substr(0, 8), "00010203");
  EXPECT_EQ(hex.substr(hex.size() - 4), "feff");
  auto back = FromHex(hex);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, all);

  auto upper = FromHex("DEADbeef");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ(*upper, std::string("\xde\xad\xbe\xef"));
  auto empty = FromHex("");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

TEST(HexTest, RejectsBadHex) {
  EXPECT_FALSE(FromHex("abc").ok());  // odd length
  EXPECT_FALSE(FromHex("zz").ok());   // not hex
  EXPECT_FALSE(FromHex("0g").ok());
  EXPECT_FALSE(FromHex(" 0").ok());
  EXPECT_FALSE(FromHex(std::string("0\0", 2)).ok());
  EXPECT_EQ(FromHex("xy").status().code(), Status::Code::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Keys

SigningKey NewKey() {
  auto key = SigningKey::Generate();
  EXPECT_TRUE(key.ok()) << key.status().ToString();
  return std::move(key).value();
}

TEST(KeysTest, GeneratedKeysAreDistinctWithStableIds) {
  SigningKey a = NewKey();
  SigningKey b = NewKey();
  EXPECT_EQ(a.public_key().raw().size(), kEd25519PublicKeySize);
  EXPECT_NE(a.public_key().raw(), b.public_key().raw());
  EXPECT_NE(a.public_key().key_id(), b.public_key().key_id());

  const std::string& id = a.public_key().key_id();
  EXPECT_EQ(id.size(), 32u);
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos);
  // The id is defined by the raw key alone.
  EXPECT_EQ(id, ToHex(Sha256Of(a.public_key().raw()).substr(0, 16)));
  auto again = PublicKey::FromRaw(a.public_key().raw());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->key_id(), id);
}

TEST(KeysTest, SignAndVerify) {
  SigningKey key = NewKey();
  const std::string message = "repo fedora serial 42";
  const std::string sig = key.Sign(message);
  EXPECT_EQ(sig.size(), kEd25519SignatureSize);
  EXPECT_TRUE(key.public_key().Verify(message, sig));
  // Ed25519 is deterministic.
  EXPECT_EQ(key.Sign(message), sig);
  // The empty message is a message too.
  EXPECT_TRUE(key.public_key().Verify("", key.Sign("")));
  EXPECT_FALSE(key.public_key().Verify("", sig));
}

TEST(KeysTest, AnyFlippedBitFailsVerification) {
  SigningKey key = NewKey();
  const std::string message = RandomBytes(200, 3);
  const std::string sig = key.Sign(message);
  for (size_t i = 0; i < message.size() * 8; i += 7) {
    std::string m = message;
    m[i / 8] = static_cast<char>(m[i / 8] ^ (1 << (i % 8)));
    EXPECT_FALSE(key.public_key().Verify(m, sig)) << "message bit " << i;
  }
  for (size_t i = 0; i < sig.size() * 8; ++i) {
    std::string s = sig;
    s[i / 8] = static_cast<char>(s[i / 8] ^ (1 << (i % 8)));
    EXPECT_FALSE(key.public_key().Verify(message, s)) << "signature bit " << i;
  }
}

TEST(KeysTest, WrongKeyFails) {
  SigningKey a = NewKey();
  SigningKey b = NewKey();
  EXPECT_FALSE(b.public_key().Verify("hello", a.Sign("hello")));
}

TEST(KeysTest, WrongSizeSignatureIsRejectedNotCrashed) {
  SigningKey key = NewKey();
  const std::string sig = key.Sign("m");
  EXPECT_FALSE(key.public_key().Verify("m", ""));
  EXPECT_FALSE(key.public_key().Verify("m", sig.substr(0, 63)));
  EXPECT_FALSE(key.public_key().Verify("m", sig + "x"));
  EXPECT_FALSE(key.public_key().Verify("m", std::string(1 << 16, '\0')));
  // A default-constructed key verifies nothing.
  EXPECT_FALSE(PublicKey().Verify("m", sig));
}

TEST(KeysTest, FromRawRejectsWrongSize) {
  EXPECT_FALSE(PublicKey::FromRaw("").ok());
  EXPECT_FALSE(PublicKey::FromRaw(std::string(31, 'a')).ok());
  EXPECT_FALSE(PublicKey::FromRaw(std::string(33, 'a')).ok());
}

TEST(KeysTest, SaveLoadRoundTrip) {
  TempDir dir;
  SigningKey key = NewKey();
  const std::string prefix = (dir / "origin").string();
  ASSERT_TRUE(key.SaveFiles(prefix).ok());

  struct stat st {};
  ASSERT_EQ(::stat((prefix + ".key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  const std::string pub_text = ReadFile(prefix + ".pub");
  EXPECT_EQ(pub_text, key.public_key().ToFileText());
  EXPECT_EQ(pub_text, "mirrorcast-ed25519-public-v1 " + ToHex(key.public_key().raw()) + "\n");
  const std::string secret_text = ReadFile(prefix + ".key");
  EXPECT_EQ(secret_text.rfind("mirrorcast-ed25519-secret-v1 ", 0), 0u);
  EXPECT_EQ(secret_text.size(), std::string("mirrorcast-ed25519-secret-v1 ").size() + 64 + 1);

  auto loaded = SigningKey::LoadFile(prefix + ".key");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->public_key().raw(), key.public_key().raw());
  EXPECT_EQ(loaded->public_key().key_id(), key.public_key().key_id());
  // The loaded key signs exactly as the original.
  EXPECT_EQ(loaded->Sign("x"), key.Sign("x"));

  auto pub = PublicKey::LoadFile(prefix + ".pub");
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_EQ(pub->raw(), key.public_key().raw());
  EXPECT_TRUE(pub->Verify("x", key.Sign("x")));
}

TEST(KeysTest, SecretKeyReadableByOthersIsRefused) {
  TempDir dir;
  SigningKey key = NewKey();
  const std::string prefix = (dir / "k").string();
  ASSERT_TRUE(key.SaveFiles(prefix).ok());
  for (mode_t mode : {0644, 0640, 0604, 0660, 0606}) {
    ASSERT_EQ(::chmod((prefix + ".key").c_str(), mode), 0);
    auto loaded = SigningKey::LoadFile(prefix + ".key");
    ASSERT_FALSE(loaded.ok()) << std::oct << mode;
    EXPECT_EQ(loaded.status().code(), Status::Code::kFailedPrecondition);
    EXPECT_NE(loaded.status().message().find("chmod 600"), std::string::npos)
        << loaded.status().message();
  }
  ASSERT_EQ(::chmod((prefix + ".key").c_str(), 0400), 0);
  EXPECT_TRUE(SigningKey::LoadFile(prefix + ".key").ok());
}

// A trusted public key decides what a mirror accepts: one that group or
// others could replace (its mode, or a directory on the way) is refused.
TEST(KeysTest, KeyFilesOthersCouldReplaceAreRefused) {
  TempDir dir;
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.ok());
  const std::string prefix = (dir / "origin").string();
  ASSERT_TRUE(key->SaveFiles(prefix).ok());
  ASSERT_TRUE(PublicKey::LoadFile(prefix + ".pub").ok());

  ASSERT_EQ(::chmod((prefix + ".pub").c_str(), 0666), 0);
  auto loose = PublicKey::LoadFile(prefix + ".pub");
  ASSERT_FALSE(loose.ok());
  EXPECT_EQ(loose.status().code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(loose.status().message().find("has mode 0666"), std::string::npos)
      << loose.status().message();
  EXPECT_NE(loose.status().message().find("chmod go-w " + prefix + ".pub"), std::string::npos);
  ASSERT_EQ(::chmod((prefix + ".pub").c_str(), 0644), 0);

  const fs::path open_dir = dir / "world-writable";
  fs::create_directories(open_dir);
  WriteFile(open_dir / "origin.pub", key->public_key().ToFileText(), 0644);
  ASSERT_EQ(::chmod(open_dir.c_str(), 0777), 0);
  auto in_open_dir = PublicKey::LoadFile(open_dir / "origin.pub");
  ASSERT_FALSE(in_open_dir.ok());
  EXPECT_NE(
      in_open_dir.status().message().find("directory " + open_dir.string() + " has mode 0777"),
      std::string::npos)
      << in_open_dir.status().message();
  // The secret key too, whatever its own mode.
  WriteFile(open_dir / "secret.key", ReadFile(prefix + ".key"), 0600);
  EXPECT_FALSE(SigningKey::LoadFile(open_dir / "secret.key").ok());

  // A sticky directory (as /tmp) lets nobody replace another's file.
  ASSERT_EQ(::chmod(open_dir.c_str(), 01777), 0);
  EXPECT_TRUE(PublicKey::LoadFile(open_dir / "origin.pub").ok());

  // A symlink to a key in a directory others can write is refused as well.
  ASSERT_EQ(::chmod(open_dir.c_str(), 0777), 0);
  const fs::path safe = dir / "safe";
  fs::create_directories(safe);
  fs::create_symlink(open_dir / "origin.pub", safe / "link.pub");
  EXPECT_FALSE(PublicKey::LoadFile(safe / "link.pub").ok());
  ASSERT_EQ(::chmod(open_dir.c_str(), 0755), 0);
  EXPECT_TRUE(PublicKey::LoadFile(safe / "link.pub").ok());
}

TEST(KeysTest, SaveFilesNeverOverwrites) {
  TempDir dir;
  SigningKey first = NewKey();
  SigningKey second = NewKey();
  const std::string prefix = (dir / "k").string();
  ASSERT_TRUE(first.SaveFiles(prefix).ok());
  Status st = second.SaveFiles(prefix);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Status::Code::kAlreadyExists);
  auto loaded = SigningKey::LoadFile(prefix + ".key");
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->public_key().raw(), first.public_key().raw());

  // Only the secret file present: still refused.
  const std::string prefix2 = (dir / "k2").string();
  WriteFile(prefix2 + ".key", "precious", 0600);
  EXPECT_EQ(second.SaveFiles(prefix2).code(), Status::Code::kAlreadyExists);
  EXPECT_EQ(ReadFile(prefix2 + ".key"), "precious");
  EXPECT_FALSE(std::filesystem::exists(prefix2 + ".pub"));

  // Only the public file present: refused without leaving a lone secret key.
  const std::string prefix3 = (dir / "k3").string();
  WriteFile(prefix3 + ".pub", "other", 0644);
  EXPECT_EQ(second.SaveFiles(prefix3).code(), Status::Code::kAlreadyExists);
  EXPECT_FALSE(std::filesystem::exists(prefix3 + ".key"));
  EXPECT_EQ(ReadFile(prefix3 + ".pub"), "other");
}

TEST(KeysTest, MalformedKeyFilesAreRejected) {
  TempDir dir;
  SigningKey key = NewKey();
  const std::string hex = ToHex(key.public_key().raw());
  const std::string bad[] = {
      "",
      "mirrorcast-ed25519-public-v1\n",
      "mirrorcast-ed25519-public-v1 " + hex.substr(2) + "\n",
      "mirrorcast-ed25519-public-v1 " + hex + "00\n",
      "mirrorcast-ed25519-public-v1 zz" + hex.substr(2) + "\n",
      "mirrorcast-ed25519-public-v2 " + hex + "\n",
      std::string(100000, 'a'),
  };
  int i = 0;
  for (const std::string& text : bad) {
    const auto path = dir / ("bad" + std::to_string(i++) + ".pub");
    WriteFile(path, text, 0600);
    EXPECT_FALSE(PublicKey::LoadFile(path).ok()) << text.substr(0, 80);
    EXPECT_FALSE(SigningKey::LoadFile(path).ok()) << text.substr(0, 80);
  }
  // A secret key line is not a public key, whatever its bytes.
  WriteFile(dir / "secret-line.pub", "mirrorcast-ed25519-secret-v1 " + hex + "\n", 0600);
  EXPECT_FALSE(PublicKey::LoadFile(dir / "secret-line.pub").ok());
  // A public key file is not a secret key file.
  ASSERT_TRUE(key.SaveFiles((dir / "good").string()).ok());
  ASSERT_EQ(::chmod((dir / "good.pub").c_str(), 0600), 0);
  EXPECT_FALSE(SigningKey::LoadFile(dir / "good.pub").ok());
  EXPECT_FALSE(PublicKey::LoadFile(dir / "good.key").ok());
  EXPECT_FALSE(PublicKey::LoadFile(dir / "missing.pub").ok());
  EXPECT_EQ(SigningKey::LoadFile(dir / "missing.key").status().code(), Status::Code::kNotFound);
}

TEST(KeysTest, KeyFileWithoutTrailingNewlineLoads) {
  TempDir dir;
  SigningKey key = NewKey();
  std::string text = key.public_key().ToFileText();
  text.pop_back();
  WriteFile(dir / "k.pub", text);
  auto pub = PublicKey::LoadFile(dir / "k.pub");
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_EQ(pub->raw(), key.public_key().raw());
}

// ---------------------------------------------------------------------------
// TrustStore

TEST(TrustStoreTest, Lookups) {
  TempDir dir;
  SigningKey a = NewKey();
  SigningKey b = NewKey();
  SigningKey stranger = NewKey();
  TrustStore trust;
  EXPECT_TRUE(trust.empty());
  EXPECT_EQ(trust.Find(a.public_key().key_id()), nullptr);

  trust.Add(a.public_key());
  ASSERT_TRUE(b.SaveFiles((dir / "b").string()).ok());
  ASSERT_TRUE(trust.AddFile(dir / "b.pub").ok());
  EXPECT_EQ(trust.size(), 2u);
  EXPECT_FALSE(trust.empty());

  const PublicKey* found_a = trust.Find(a.public_key().key_id());
  ASSERT_NE(found_a, nullptr);
  EXPECT_EQ(found_a->raw(), a.public_key().raw());
  const PublicKey* found_b = trust.Find(b.public_key().key_id());
  ASSERT_NE(found_b, nullptr);
  EXPECT_TRUE(found_b->Verify("m", b.Sign("m")));

  EXPECT_EQ(trust.Find(stranger.public_key().key_id()), nullptr);
  EXPECT_EQ(trust.Find(""), nullptr);
  EXPECT_EQ(trust.Find(a.public_key().key_id().substr(0, 31)), nullptr);

  // Adding the same key twice keeps one entry.
  trust.Add(a.public_key());
  EXPECT_EQ(trust.size(), 2u);

  EXPECT_FALSE(trust.AddFile(dir / "missing.pub").ok());
  EXPECT_EQ(trust.size(), 2u);
}

}  // namespace
}  // namespace mirrorcast
