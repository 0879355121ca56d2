// Fuzzes the key-file readers: an operator-supplied or copied .pub file
// (PublicKey::LoadFile, TrustStore::AddFile), a .key file
// (SigningKey::LoadFile), the hex and raw key decoders beneath them, and the
// CURVE transport key files (LoadCurvePublicFile, LoadCurveSecretFile).
#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/net/curve.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"
#include "tests/fuzz/scratch_dir.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

// A key that loads survives its own file format.
void CheckLoadedKey(const PublicKey& key) {
  if (key.raw().size() != kEd25519PublicKeySize || key.key_id().size() != 32) __builtin_trap();
  const std::filesystem::path copy = Scratch() / "key-copy.pub";
  WriteScratchFile(copy, key.ToFileText());
  auto again = PublicKey::LoadFile(copy);
  if (!again.ok() || again->raw() != key.raw() || again->key_id() != key.key_id()) {
    __builtin_trap();
  }
}

}  // namespace

std::vector<std::string> KeyfileSeeds() {
  // RFC 8032 test 1: its public key and its secret seed, in our file format.
  return {
      "mirrorcast-ed25519-public-v1 "
      "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n",
      "mirrorcast-ed25519-secret-v1 "
      "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n",
      "mirrorcast-ed25519-public-v1 "
      "D75A980182B10AB7D54BFED3C964073A0EE172F3DAA62325AF021A68F707511A \r\n",
      "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
      // CurveZMQ's example server key pair (RFC 26), in our file formats.
      "mirrorcast-curve-public-v1 rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\n",
      "mirrorcast-curve-secret-v1 JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6\n",
  };
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast;
  using namespace mirrorcast::fuzz;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);

  const std::filesystem::path pub = Scratch() / "fuzz.pub";
  WriteScratchFile(pub, bytes);
  auto loaded = PublicKey::LoadFile(pub);
  if (loaded.ok()) CheckLoadedKey(*loaded);
  TrustStore trust;
  if (trust.AddFile(pub).ok() != loaded.ok()) __builtin_trap();

  // The secret-key reader also refuses files open to others; 0600 gets past that.
  const std::filesystem::path secret = Scratch() / "fuzz.key";
  WriteScratchFile(secret, bytes);
  ::chmod(secret.c_str(), 0600);
  auto signer = SigningKey::LoadFile(secret);
  if (signer.ok()) {
    const std::string sig = signer->Sign(bytes);
    if (!signer->public_key().Verify(bytes, sig)) __builtin_trap();
  }

  // CURVE key files: a secret gives a key pair whose public half is what
  // its own public file would hold.
  auto curve_pub = LoadCurvePublicFile(pub);
  if (curve_pub.ok() && !IsCurveKeyZ85(*curve_pub)) __builtin_trap();
  auto curve = LoadCurveSecretFile(secret);
  if (curve.ok()) {
    if (!IsCurveKeyZ85(curve->public_z85) || !IsCurveKeyZ85(curve->secret_z85)) __builtin_trap();
    const std::filesystem::path copy = Scratch() / "curve-copy.pub";
    WriteScratchFile(copy, CurvePublicFileText(curve->public_z85));
    auto again = LoadCurvePublicFile(copy);
    if (!again.ok() || *again != curve->public_z85) __builtin_trap();
  }

  // The decoders under the file format, on the bare bytes.
  auto hex = FromHex(bytes);
  if (hex.ok()) {
    if (hex->size() * 2 != size || FromHex(ToHex(*hex)).value() != *hex) __builtin_trap();
    auto raw = PublicKey::FromRaw(*hex);
    if (raw.ok()) CheckLoadedKey(*raw);
  }
  auto raw = PublicKey::FromRaw(bytes);
  if (raw.ok()) CheckLoadedKey(*raw);
  return 0;
}
