// mirrorcast keygen --out PREFIX: a new Ed25519 signing key pair;
// mirrorcast keygen --curve --out PREFIX: a new CURVE transport key pair.
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <system_error>

#include "core/cli/options.h"
#include "core/crypto/keys.h"
#include "core/net/curve.h"
#include "tools/commands.h"

namespace po = boost::program_options;

namespace mirrorcast {

int KeygenMain(int argc, char** argv) {
  const ProgramInfo info{
      "mirrorcast keygen", "mirrorcast keygen [--curve] --out PREFIX",
      "Creates a new Ed25519 signing key pair: PREFIX.key (the secret key, mode 0600; give it "
      "to mirrorcast-publish --key) and PREFIX.pub (the public key; give it to brokers and "
      "subscribers as a trusted key). Prints the key id.\n"
      "With --curve, creates a CURVE transport key pair instead: PREFIX.curve.key (the secret, "
      "mode 0600; the program's own --curve-key) and PREFIX.curve.pub (the public key in Z85: "
      "a client's goes into the broker's --allow list, the broker's is every client's "
      "--broker-key). Prints the public key. Never overwrites an existing file."};
  po::options_description options("Keygen options");
  options.add_options()("out", po::value<std::string>()->required(),
                        "path prefix of the two files to create (PREFIX.key, PREFIX.pub; with "
                        "--curve PREFIX.curve.key, PREFIX.curve.pub)")(
      "curve", po::bool_switch(), "make a CURVE transport key pair instead of a signing key");
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;

  const std::string prefix = (*vm)["out"].as<std::string>();
  if (prefix.empty()) throw std::runtime_error("--out must not be empty");
  const bool curve = (*vm)["curve"].as<bool>();
  const std::filesystem::path key_path = prefix + (curve ? ".curve.key" : ".key");
  const std::filesystem::path pub_path = prefix + (curve ? ".curve.pub" : ".pub");
  for (const auto& path : {key_path, pub_path}) {
    std::error_code ec;
    if (std::filesystem::exists(std::filesystem::symlink_status(path, ec))) {
      std::cerr << info.name << ": error: refusing to overwrite existing " << path.string() << "\n";
      return 1;
    }
  }

  if (curve) {
    Result<CurveKeyPair> keys = GenerateCurveKeyPair();
    if (!keys.ok()) {
      std::cerr << info.name << ": error: cannot generate a key: " << keys.status().message()
                << "\n";
      return 1;
    }
    if (Status s = SaveCurveKeyFiles(*keys, prefix); !s.ok()) {
      std::cerr << info.name << ": error: cannot save the key pair: " << s.message() << "\n";
      return 1;
    }
    std::cout << "public key: " << keys->public_z85 << "\n"
              << "secret key: " << key_path.string() << " (mode 0600, keep it private)\n"
              << "public key file: " << pub_path.string() << "\n";
    return 0;
  }
  Result<SigningKey> key = SigningKey::Generate();
  if (!key.ok()) {
    std::cerr << info.name << ": error: cannot generate a key: " << key.status().message() << "\n";
    return 1;
  }
  if (Status s = key->SaveFiles(prefix); !s.ok()) {
    std::cerr << info.name << ": error: cannot save the key pair: " << s.message() << "\n";
    return 1;
  }
  std::cout << "key id:     " << key->public_key().key_id() << "\n"
            << "secret key: " << key_path.string() << " (mode 0600, keep it private)\n"
            << "public key: " << pub_path.string() << "\n";
  return 0;
}

}  // namespace mirrorcast
