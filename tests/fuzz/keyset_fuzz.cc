// Fuzzes the key-set decoder: a SignedKeySet from a broker's Hello, an
// operator's file or a mirror's own state (KeySet::Decode), and what is
// done with one that decodes: its signatures checked against a root
// (CheckKeySetUpdate), adoption by a KeyTrust, its description, and events
// judged with it.
#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/wire/envelope.h"
#include "core/wire/key_trust.h"
#include "core/wire/keyset.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"
#include "tests/fuzz/scratch_dir.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

constexpr int64_t kNow = 1'800'000'000;

// A fixed key (RFC 8032 test 1's seed, and a second one), so seeds and
// signatures are the same on every run.
const SigningKey& FixedKey(int which) {
  static const SigningKey* keys[2] = {nullptr, nullptr};
  if (keys[which] == nullptr) {
    static const char* kSeeds[2] = {
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"};
    const std::filesystem::path file = Scratch() / ("keyset-" + std::to_string(which) + ".key");
    WriteScratchFile(file, std::string("mirrorcast-ed25519-secret-v1 ") + kSeeds[which] + "\n");
    ::chmod(file.c_str(), 0600);
    auto key = SigningKey::LoadFile(file);
    if (!key.ok()) __builtin_trap();
    keys[which] = new SigningKey(std::move(key).value());
  }
  return *keys[which];
}

v1::KeySet Body(uint64_t version) {
  v1::KeySet body;
  body.set_version(version);
  body.set_issued_unix(kNow - 10);
  body.set_expires_unix(kNow + 86400);
  body.mutable_root()->add_keys(FixedKey(0).public_key().raw());
  v1::PublisherRule* rule = body.add_publishers();
  rule->add_repos("demo");
  rule->add_repos("fedora-*");
  rule->mutable_signers()->add_keys(FixedKey(1).public_key().raw());
  body.mutable_heartbeat()->add_keys(FixedKey(1).public_key().raw());
  return body;
}

}  // namespace

std::vector<std::string> KeysetSeeds() {
  const SigningKey& root = FixedKey(0);
  std::vector<std::string> seeds;
  seeds.push_back(AddKeySetSignatures(MakeUnsignedKeySet(Body(1)), {&root}).value());
  v1::KeySet two = Body(2);
  two.mutable_root()->add_keys(FixedKey(1).public_key().raw());
  two.mutable_root()->set_threshold(2);
  two.mutable_publishers(0)->mutable_signers()->set_threshold(1);
  v1::SerialReset* reset = two.add_resets();
  reset->set_repo("demo");
  reset->set_floor(3);
  reset->set_since_version(2);
  two.set_comment("rotation after a compromise");
  seeds.push_back(AddKeySetSignatures(MakeUnsignedKeySet(two), {&root, &FixedKey(1)}).value());
  seeds.push_back(MakeUnsignedKeySet(Body(3)));
  return seeds;
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast;
  using namespace mirrorcast::fuzz;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);

  auto set = KeySet::Decode(bytes);
  if (!set.ok()) return 0;
  // What decodes is what was given, bounded as promised.
  if (set->bytes() != bytes || size > kMaxKeySetBytes || set->version() == 0 ||
      set->expires_unix() == 0 || set->root().keys.empty() || set->root().threshold < 1 ||
      set->root().threshold > set->root().keys.size()) {
    __builtin_trap();
  }
  if (set->SignedBy(set->root()) > static_cast<size_t>(set->signed_set().signatures_size())) {
    __builtin_trap();
  }
  (void)DescribeKeySet(*set);
  (void)set->PublishersFor("demo");
  (void)set->ResetFor("demo");

  // Judged as a mirror holding root 0 would; adopted if it passes, then an
  // event by key 1 judged with it.
  TrustStore roots;
  roots.Add(FixedKey(0).public_key());
  KeyTrust trust = KeyTrust::Rooted(std::move(roots));
  auto checked = trust.Check(bytes, kNow);
  if (checked.ok()) {
    if (checked->SignedBy(checked->root()) < checked->root().threshold) __builtin_trap();
    trust.Adopt(std::move(checked).value());
    v1::SignedPayload payload;
    payload.mutable_repo_changed()->set_repo("demo");
    payload.mutable_repo_changed()->set_keyset_version(trust.version());
    (void)trust.OpenEvent(SealEnvelope(payload, FixedKey(1)), kNow);
    // Versions never go backwards: the same bytes again are no update.
    if (trust.Check(bytes, kNow).ok()) __builtin_trap();
  }
  KeyTrust stored = KeyTrust::Rooted(TrustStore());
  (void)stored.AdoptStored(bytes);
  return 0;
}
