#include "core/delta/delta.h"

#include <gtest/gtest.h>
#include <librsync.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "core/crypto/sha256.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tree.h"

namespace mirrorcast {
namespace {

namespace fs = std::filesystem;
using testing::RandomBytes;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

constexpr size_t kSigLimit = 64u << 20;

std::string FileSha(const fs::path& p) {
  auto sha = Sha256File(p);
  EXPECT_TRUE(sha.ok()) << sha.status().ToString();
  return sha.ok() ? *sha : std::string();
}

// A librsync signature of `basis` with an arbitrary magic, made directly with
// librsync the way a hostile or outdated peer would.
std::string RawSignature(const fs::path& basis, rs_magic_number magic) {
  FILE* in = std::fopen(basis.c_str(), "rb");
  EXPECT_NE(in, nullptr);
  char* mem = nullptr;
  size_t size = 0;
  FILE* out = open_memstream(&mem, &size);
  EXPECT_NE(out, nullptr);
  size_t block_len = 0;
  size_t strong_len = 0;
  rs_magic_number m = magic;
  EXPECT_EQ(rs_sig_args(static_cast<rs_long_t>(fs::file_size(basis)), &m, &block_len, &strong_len),
            RS_DONE);
  EXPECT_EQ(rs_sig_file(in, out, block_len, strong_len, magic, nullptr), RS_DONE);
  std::fclose(in);
  std::fclose(out);
  std::string sig(mem, size);
  std::free(mem);
  return sig;
}

class DeltaTest : public ::testing::Test {
 protected:
  // Full round trip: signature of basis, delta to target, patch; returns stats.
  DeltaStats RoundTrip(const std::string& basis_data, const std::string& target_data) {
    WriteFile(dir_ / "basis", basis_data);
    WriteFile(dir_ / "target", target_data);
    auto sig = ComputeSignature(dir_ / "basis");
    EXPECT_TRUE(sig.ok()) << sig.status().ToString();
    EXPECT_TRUE(CheckSignature(*sig, kSigLimit).ok());
    DeltaStats stats;
    Status st = ComputeDelta(*sig, dir_ / "target", dir_ / "delta", &stats);
    EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(stats.delta_bytes, fs::file_size(dir_ / "delta"));
    st = ApplyDelta(dir_ / "basis", dir_ / "delta", dir_ / "out", target_data.size());
    EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(FileSha(dir_ / "out"), Sha256Of(target_data));
    EXPECT_EQ(fs::file_size(dir_ / "out"), target_data.size());
    return stats;
  }

  TempDir dir_;
};

TEST_F(DeltaTest, SmallChangeInLargeFileGivesSmallDelta) {
  const size_t size = 8u << 20;
  const std::string basis = RandomBytes(size, 1);
  std::string target = basis;
  // A few KB changed in three places, plus an insertion that shifts the rest.
  const std::string patch1 = RandomBytes(2000, 2);
  const std::string patch2 = RandomBytes(1500, 3);
  target.replace(1000, patch1.size(), patch1);
  target.replace(size / 2, patch2.size(), patch2);
  target.insert(size - 100000, RandomBytes(777, 4));

  DeltaStats stats = RoundTrip(basis, target);
  EXPECT_LT(stats.delta_bytes, size / 20) << "delta " << stats.delta_bytes;
  EXPECT_GE(stats.literal_bytes, patch1.size() + patch2.size() + 777);
  EXPECT_GT(stats.copied_bytes, size - size / 20);
  EXPECT_EQ(stats.literal_bytes + stats.copied_bytes, target.size());

  // The signature is a small fraction of the file.
  auto sig = ComputeSignature(dir_ / "basis");
  ASSERT_TRUE(sig.ok());
  EXPECT_LT(sig->size(), size / 100);
}

TEST_F(DeltaTest, ApplyReportsTheHashOfWhatItWrote) {
  const std::string basis = RandomBytes(1 << 20, 21);
  std::string target = basis;
  target.replace(5000, 3000, RandomBytes(3000, 22));
  WriteFile(dir_ / "basis", basis);
  WriteFile(dir_ / "target", target);
  auto sig = ComputeSignature(dir_ / "basis");
  ASSERT_TRUE(sig.ok());
  ASSERT_TRUE(ComputeDelta(*sig, dir_ / "target", dir_ / "delta", nullptr).ok());
  std::string sha;
  ASSERT_TRUE(ApplyDelta(dir_ / "basis", dir_ / "delta", dir_ / "out", target.size(), &sha).ok());
  EXPECT_EQ(sha, Sha256Of(target));
  // Against another basis, the reported hash is that of the garbage written.
  WriteFile(dir_ / "other", RandomBytes(1 << 20, 23));
  ASSERT_TRUE(ApplyDelta(dir_ / "other", dir_ / "delta", dir_ / "out2", target.size(), &sha).ok());
  EXPECT_NE(sha, Sha256Of(target));
  EXPECT_EQ(sha, *Sha256File(dir_ / "out2"));
}

TEST_F(DeltaTest, IdenticalFile) {
  const std::string data = RandomBytes(1u << 20, 5);
  DeltaStats stats = RoundTrip(data, data);
  EXPECT_EQ(stats.copied_bytes, data.size());
  EXPECT_EQ(stats.literal_bytes, 0u);
  EXPECT_LT(stats.delta_bytes, 1000u);
}

TEST_F(DeltaTest, TotallyDifferentFile) {
  const std::string basis = RandomBytes(300000, 6);
  const std::string target = RandomBytes(400000, 7);
  DeltaStats stats = RoundTrip(basis, target);
  EXPECT_EQ(stats.literal_bytes, target.size());
  EXPECT_EQ(stats.copied_bytes, 0u);
  EXPECT_GE(stats.delta_bytes, target.size());
}

TEST_F(DeltaTest, EmptyBasisAndEmptyTarget) {
  const std::string target = RandomBytes(50000, 8);
  DeltaStats stats = RoundTrip("", target);
  EXPECT_EQ(stats.literal_bytes, target.size());
  RoundTrip(RandomBytes(5000, 9), "");
  RoundTrip("", "");
}

TEST_F(DeltaTest, Md4SignatureRefused) {
  WriteFile(dir_ / "basis", RandomBytes(100000, 10));
  WriteFile(dir_ / "target", RandomBytes(100000, 11));
  for (rs_magic_number magic : {RS_MD4_SIG_MAGIC, RS_RK_MD4_SIG_MAGIC, RS_BLAKE2_SIG_MAGIC}) {
    const std::string sig = RawSignature(dir_ / "basis", magic);
    ASSERT_GE(sig.size(), 12u);
    Status st = CheckSignature(sig, kSigLimit).status();
    ASSERT_FALSE(st.ok()) << std::hex << magic;
    EXPECT_EQ(st.code(), Status::Code::kRejected);
    st = ComputeDelta(sig, dir_ / "target", dir_ / "delta", nullptr);
    EXPECT_FALSE(st.ok()) << std::hex << magic;
  }
  // The same call with the accepted magic works, so the refusal is the magic.
  const std::string good = RawSignature(dir_ / "basis", RS_RK_BLAKE2_SIG_MAGIC);
  EXPECT_TRUE(CheckSignature(good, kSigLimit).ok());
  EXPECT_TRUE(ComputeDelta(good, dir_ / "target", dir_ / "delta", nullptr).ok());
}

TEST_F(DeltaTest, TruncatedGarbageAndOversizeSignaturesRefused) {
  WriteFile(dir_ / "basis", RandomBytes(200000, 12));
  WriteFile(dir_ / "target", RandomBytes(200000, 13));
  auto sig = ComputeSignature(dir_ / "basis");
  ASSERT_TRUE(sig.ok());

  // Every truncation to a short header or a partial block record. (A cut at a
  // record boundary is a well-formed signature of a shorter basis.)
  const size_t record = 4 + static_cast<unsigned char>((*sig)[11]);
  ASSERT_GE(record, 4u + 8u);  // at least 64-bit BLAKE2 strong sums
  for (size_t n = 0; n < sig->size(); n += (n < 64 ? 1 : 97)) {
    if (n >= 12 && (n - 12) % record == 0) continue;
    const std::string cut = sig->substr(0, n);
    EXPECT_FALSE(CheckSignature(cut, kSigLimit).ok()) << n;
    EXPECT_FALSE(ComputeDelta(cut, dir_ / "target", dir_ / "delta", nullptr).ok()) << n;
  }
  // Absurd header fields.
  auto with_be32 = [&](size_t offset, uint32_t v) {
    std::string s = *sig;
    for (int i = 0; i < 4; ++i) s[offset + i] = static_cast<char>(v >> (24 - 8 * i));
    return s;
  };
  for (uint32_t block_len : {0u, 1u, 16u, 0x7fffffffu, 0xffffffffu}) {
    EXPECT_FALSE(CheckSignature(with_be32(4, block_len), kSigLimit).ok()) << block_len;
  }
  for (uint32_t strong_len : {0u, 33u, 1000u, 0xffffffffu}) {
    EXPECT_FALSE(CheckSignature(with_be32(8, strong_len), kSigLimit).ok()) << strong_len;
    EXPECT_FALSE(
        ComputeDelta(with_be32(8, strong_len), dir_ / "target", dir_ / "delta", nullptr).ok());
  }
  // Oversize.
  Status st = CheckSignature(*sig, sig->size() - 1).status();
  EXPECT_EQ(st.code(), Status::Code::kResourceExhausted);
  EXPECT_TRUE(CheckSignature(*sig, sig->size()).ok());

  // Random garbage never crashes ComputeDelta, header-shaped or not.
  std::mt19937_64 rng(99);
  for (int i = 0; i < 200; ++i) {
    std::string junk = RandomBytes(rng() % 2000, rng());
    if (i % 2 == 0 && junk.size() >= 12) junk.replace(0, 4, sig->substr(0, 12));
    (void)ComputeDelta(junk, dir_ / "target", dir_ / "delta", nullptr);
  }
}

TEST_F(DeltaTest, WrongBasisIsDetectedByHashAndDoesNotCrash) {
  const std::string basis = RandomBytes(1u << 20, 14);
  std::string target = basis;
  target.replace(5000, 3000, RandomBytes(3000, 15));
  WriteFile(dir_ / "basis", basis);
  WriteFile(dir_ / "target", target);
  auto sig = ComputeSignature(dir_ / "basis");
  ASSERT_TRUE(sig.ok());
  ASSERT_TRUE(ComputeDelta(*sig, dir_ / "target", dir_ / "delta", nullptr).ok());

  // Same size, different content: patching "works", the hash tells.
  WriteFile(dir_ / "other", RandomBytes(basis.size(), 16));
  Status st = ApplyDelta(dir_ / "other", dir_ / "delta", dir_ / "out", target.size());
  if (st.ok()) {
    EXPECT_NE(FileSha(dir_ / "out"), Sha256Of(target));
  }

  // A shorter basis: the delta copies beyond its end, which is an error.
  WriteFile(dir_ / "short", basis.substr(0, 1000));
  st = ApplyDelta(dir_ / "short", dir_ / "delta", dir_ / "out2", target.size());
  if (st.ok()) {
    EXPECT_NE(FileSha(dir_ / "out2"), Sha256Of(target));
  } else {
    EXPECT_FALSE(fs::exists(dir_ / "out2"));  // no half-built file left behind
  }

  // An empty basis.
  WriteFile(dir_ / "empty", "");
  st = ApplyDelta(dir_ / "empty", dir_ / "delta", dir_ / "out3", target.size());
  if (st.ok()) {
    EXPECT_NE(FileSha(dir_ / "out3"), Sha256Of(target));
  }
}

TEST_F(DeltaTest, OutputLimitEnforced) {
  const std::string basis = RandomBytes(1u << 20, 17);
  std::string target = basis + basis;  // mostly copies: a tiny delta, a big output
  DeltaStats stats = RoundTrip(basis, target);
  EXPECT_LT(stats.delta_bytes, 10000u);

  Status st = ApplyDelta(dir_ / "basis", dir_ / "delta", dir_ / "limited", target.size() - 1);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Status::Code::kResourceExhausted);
  EXPECT_FALSE(fs::exists(dir_ / "limited"));

  st = ApplyDelta(dir_ / "basis", dir_ / "delta", dir_ / "limited", 0);
  EXPECT_EQ(st.code(), Status::Code::kResourceExhausted);

  // Exactly the limit is fine.
  st = ApplyDelta(dir_ / "basis", dir_ / "delta", dir_ / "exact", target.size());
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(FileSha(dir_ / "exact"), Sha256Of(target));
}

TEST_F(DeltaTest, CorruptDeltasFailCleanly) {
  const std::string basis = RandomBytes(300000, 18);
  std::string target = basis;
  target.replace(100, 5000, RandomBytes(5000, 19));
  RoundTrip(basis, target);
  const std::string delta = ReadFile(dir_ / "delta");

  // Truncated deltas are refused.
  for (size_t n :
       {size_t{0}, size_t{3}, size_t{4}, size_t{10}, delta.size() / 2, delta.size() - 1}) {
    WriteFile(dir_ / "cut", delta.substr(0, n));
    Status st = ApplyDelta(dir_ / "basis", dir_ / "cut", dir_ / "out", target.size());
    EXPECT_FALSE(st.ok()) << n;
  }
  // Random edits and random bytes: any outcome but a crash; a success must
  // still respect the output limit.
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::string bad = (i % 2 == 0) ? delta : RandomBytes(rng() % 4000, rng());
    if (i % 2 == 0) {
      for (int e = 0; e < 4; ++e) bad[rng() % bad.size()] = static_cast<char>(rng());
    } else if (bad.size() >= 4) {
      bad.replace(0, 4, delta.substr(0, 4));  // valid magic, garbage commands
    }
    WriteFile(dir_ / "bad", bad);
    Status st = ApplyDelta(dir_ / "basis", dir_ / "bad", dir_ / "out", target.size());
    if (st.ok()) {
      EXPECT_LE(fs::file_size(dir_ / "out"), target.size());
    }
  }
}

TEST_F(DeltaTest, MissingFilesReported) {
  EXPECT_EQ(ComputeSignature(dir_ / "missing").status().code(), Status::Code::kNotFound);
  WriteFile(dir_ / "basis", "abc");
  auto sig = ComputeSignature(dir_ / "basis");
  ASSERT_TRUE(sig.ok());
  EXPECT_FALSE(ComputeDelta(*sig, dir_ / "missing", dir_ / "delta", nullptr).ok());
  EXPECT_FALSE(ApplyDelta(dir_ / "missing", dir_ / "basis", dir_ / "out", 100).ok());
  // A directory is not a basis.
  fs::create_directory(dir_ / "d");
  EXPECT_FALSE(ComputeSignature(dir_ / "d").ok());
}

// A signature header then `records` records of `strong` bytes.
std::string ShapedSignature(uint32_t block, uint32_t strong, size_t records, bool same_weak) {
  std::string sig;
  auto be32 = [&](uint32_t v) {
    for (int i = 3; i >= 0; --i) sig.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  be32(RS_RK_BLAKE2_SIG_MAGIC);
  be32(block);
  be32(strong);
  for (size_t r = 0; r < records; ++r) {
    be32(same_weak ? 0xabcdef01u : static_cast<uint32_t>(r * 2654435761u));
    for (uint32_t k = 0; k < strong; ++k) sig.push_back(static_cast<char>(r + k * 7));
  }
  return sig;
}

TEST_F(DeltaTest, SignatureIsBoundedByTheFileItDescribesBeforeAnyWork) {
  const uint64_t size = 4u << 20;
  // The bound: a basis of twice the file, in the signature's own blocks.
  EXPECT_EQ(MaxSignatureBytes(size, 256, 8), 12 + (2 * size / 256) * 12);
  EXPECT_EQ(MaxSignatureBytes(size, 2048, 8), kSignatureBytesAllowance);  // the floor
  EXPECT_EQ(MaxSignatureBytes(0, 2048, 8), kSignatureBytesAllowance);
  EXPECT_TRUE(CheckSignatureFor(ShapedSignature(256, 8, 32768, false), size).ok());
  auto over = CheckSignatureFor(ShapedSignature(256, 8, 32769, false), size);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), Status::Code::kRejected);
  EXPECT_NE(over.status().message().find("larger than the signature of a basis of 2x"),
            std::string::npos)
      << over.status().message();

  // The attack: strong sums of one byte (and anything under 8).
  for (uint32_t strong : {1u, 4u, 7u}) {
    auto weak = CheckSignatureFor(ShapedSignature(2048, strong, 100, false), size);
    ASSERT_FALSE(weak.ok()) << strong;
    EXPECT_NE(weak.status().message().find("outside [8, 32]"), std::string::npos);
  }
  // Silly block lengths.
  for (uint32_t block : {1u, 128u, 255u, (16u << 20) + 1}) {
    EXPECT_FALSE(CheckSignatureFor(ShapedSignature(block, 8, 10, false), size).ok()) << block;
  }
  // Records crafted to share one weak sum; identical records count once.
  auto collide = CheckSignatureFor(ShapedSignature(256, 8, 17, true), size);
  ASSERT_FALSE(collide.ok());
  EXPECT_NE(collide.status().message().find("different blocks with one weak sum"),
            std::string::npos);
  EXPECT_TRUE(CheckSignatureFor(ShapedSignature(256, 8, 16, true), size).ok());
  std::string same = ShapedSignature(256, 8, 1, true);
  const std::string record = same.substr(12);
  for (int i = 0; i < 1000; ++i) same += record;
  EXPECT_TRUE(CheckSignatureFor(same, size).ok());

  // ComputeDelta applies the same check against the file it reads, and
  // writes nothing.
  WriteFile(dir_ / "target", RandomBytes(size, 30));
  Status st =
      ComputeDelta(ShapedSignature(256, 8, 32769, false), dir_ / "target", dir_ / "delta", nullptr);
  EXPECT_EQ(st.code(), Status::Code::kRejected) << st.ToString();
  EXPECT_FALSE(fs::exists(dir_ / "delta"));
}

TEST_F(DeltaTest, HonestSignaturesOfABasisUpToTwiceTheFilePass) {
  // Zeros make identical blocks: one record, however many.
  for (const std::string& basis :
       {RandomBytes(1u << 20, 31), std::string(1u << 20, '\0'), RandomBytes(70000, 32)}) {
    WriteFile(dir_ / "basis", basis);
    auto sig = ComputeSignature(dir_ / "basis");
    ASSERT_TRUE(sig.ok());
    EXPECT_TRUE(CheckSignatureFor(*sig, basis.size()).ok());
    EXPECT_TRUE(CheckSignatureFor(*sig, basis.size() / 2).ok());
  }
}

TEST_F(DeltaTest, DeltaLimitsBoundTheOutputAndStop) {
  const std::string basis = RandomBytes(1u << 20, 33);
  const std::string target = RandomBytes(1u << 20, 34);  // nothing in common: all literal
  WriteFile(dir_ / "basis", basis);
  WriteFile(dir_ / "target", target);
  auto sig = ComputeSignature(dir_ / "basis");
  ASSERT_TRUE(sig.ok());
  DeltaLimits small;
  small.max_delta_bytes = 100000;
  Status st = ComputeDelta(*sig, dir_ / "target", dir_ / "delta", nullptr, small);
  EXPECT_EQ(st.code(), Status::Code::kResourceExhausted) << st.ToString();
  EXPECT_FALSE(fs::exists(dir_ / "delta"));
  DeltaLimits stopped;
  stopped.should_stop = [] { return true; };
  st = ComputeDelta(*sig, dir_ / "target", dir_ / "delta", nullptr, stopped);
  EXPECT_EQ(st.code(), Status::Code::kUnavailable) << st.ToString();
  EXPECT_FALSE(fs::exists(dir_ / "delta"));
  DeltaStats stats;
  EXPECT_TRUE(ComputeDelta(*sig, dir_ / "target", dir_ / "delta", &stats).ok());
  EXPECT_EQ(stats.delta_bytes, fs::file_size(dir_ / "delta"));
  EXPECT_EQ(stats.literal_bytes, target.size());
}

}  // namespace
}  // namespace mirrorcast
