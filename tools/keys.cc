// mirrorcast keys make|sign|show|publish: key sets (core/wire/keyset.h) for
// mirrors and brokers started with --root-key. docs/operations.md walks
// through a rotation and a revocation with them.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/base/clock.h"
#include "core/cli/options.h"
#include "core/cli/transport.h"
#include "core/crypto/keys.h"
#include "core/fs/atomic.h"
#include "core/net/control_client.h"
#include "core/net/publish_client.h"
#include "core/wire/envelope.h"
#include "core/wire/keyset.h"
#include "tools/commands.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace mirrorcast {
namespace {

constexpr int64_t kSecondsPerDay = 86400;
// A description is a few dozen lines; anything much larger is a mistake.
constexpr size_t kMaxDescriptionBytes = 256u << 10;

std::vector<std::string> Words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

Result<uint64_t> Number(const std::string& text, const std::string& what) {
  if (text.empty() || text.size() > 19 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument(what + ": not a number: '" + text + "'");
  }
  return static_cast<uint64_t>(std::stoull(text));
}

Status AddKey(const fs::path& base, const std::string& file, v1::KeyGroup* group) {
  const fs::path path = fs::path(file).is_absolute() ? fs::path(file) : base / file;
  MC_ASSIGN_OR_RETURN(PublicKey key, PublicKey::LoadFile(path));
  group->add_keys(key.raw());
  return Status::Ok();
}

Result<std::string> ReadSetFile(const std::string& file) {
  return ReadFileToString(file, kMaxKeySetBytes);
}

[[noreturn]] void Fail(const std::string& message) { throw std::runtime_error(message); }

template <typename T>
T OrFail(Result<T> result, const std::string& context) {
  if (!result.ok()) Fail(context + ": " + result.status().message());
  return std::move(result).value();
}

void OrFail(const Status& status, const std::string& context) {
  if (!status.ok()) Fail(context + ": " + status.message());
}

std::vector<std::string> Strings(const po::variables_map& vm, const char* name) {
  return vm.count(name) ? vm[name].as<std::vector<std::string>>() : std::vector<std::string>{};
}

std::vector<SigningKey> LoadSigners(const std::vector<std::string>& files) {
  std::vector<SigningKey> keys;
  for (const auto& file : files) keys.push_back(OrFail(SigningKey::LoadFile(file), file));
  return keys;
}

std::string SignWith(std::string bytes, const std::vector<SigningKey>& keys) {
  std::vector<const SigningKey*> ptrs;
  for (const auto& k : keys) ptrs.push_back(&k);
  return OrFail(AddKeySetSignatures(bytes, ptrs), "signing the key set");
}

int MakeMain(int argc, char** argv) {
  const ProgramInfo info{
      "mirrorcast keys make",
      "mirrorcast keys make --out FILE [--from DESCRIPTION] [--keyset-version N] [--expires-days "
      "D] "
      "[--root PUB]... [--publisher 'PATTERNS PUB...']... [--heartbeat PUB]... "
      "[--reset 'REPO FLOOR [SINCE]']... [--sign KEY]...",
      "Writes a key set (unsigned, or signed with --sign) to FILE. It says which keys may sign "
      "events of which repos, which sign heartbeats, and which root signs the next key set. "
      "Give it as a description file (--from; one statement a line, '#' comments), as flags "
      "(each flag is one such line), or both. Statements:\n"
      "  version N                      required; each new key set needs a higher one\n"
      "  expires-days D | expires UNIX  required; refused after this\n"
      "  root PUB...                    the root (required); root-threshold K: K must sign\n"
      "  publisher PATTERNS PUB... [threshold=K]\n"
      "                                 keys that may sign events of the repos PATTERNS names\n"
      "                                 (comma-separated: exact names, 'prefix*' or '*'); with a\n"
      "                                 threshold, K distinct of them must sign each event\n"
      "  heartbeat PUB...               heartbeat keys; heartbeat-threshold K\n"
      "  reset REPO FLOOR [SINCE]       fast-forward recovery: mirrors that accepted a serial of\n"
      "                                 REPO above FLOOR under a key set older than SINCE\n"
      "                                 (default: this version) go back to FLOOR, once\n"
      "  comment TEXT                   shown by 'keys show'\n"
      "PUB paths in a description are relative to its directory."};
  po::options_description options("Keys make options");
  // clang-format off
  options.add_options()
      ("out", po::value<std::string>()->required(), "key set file to write")
      ("from", po::value<std::string>(), "description file (statements above)")
      ("keyset-version", po::value<uint64_t>(), "statement 'version N'")
      ("expires-days", po::value<uint64_t>(), "statement 'expires-days D'")
      ("root", po::value<std::vector<std::string>>()->composing(), "statement 'root PUB'")
      ("root-threshold", po::value<uint32_t>(), "statement 'root-threshold K'")
      ("publisher", po::value<std::vector<std::string>>()->composing(),
       "statement 'publisher PATTERNS PUB... [threshold=K]' (quote it)")
      ("heartbeat", po::value<std::vector<std::string>>()->composing(),
       "statement 'heartbeat PUB'")
      ("heartbeat-threshold", po::value<uint32_t>(), "statement 'heartbeat-threshold K'")
      ("reset", po::value<std::vector<std::string>>()->composing(),
       "statement 'reset REPO FLOOR [SINCE]' (quote it)")
      ("comment", po::value<std::string>(), "statement 'comment TEXT'")
      ("sign", po::value<std::vector<std::string>>()->composing(),
       "secret key file to sign the new key set with (repeatable)");
  // clang-format on
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  std::string text;
  fs::path base = fs::current_path();
  if (vm->count("from")) {
    const fs::path from = (*vm)["from"].as<std::string>();
    text = OrFail(ReadFileToString(from, kMaxDescriptionBytes), from.string());
    text += "\n";
    base = from.has_parent_path() ? from.parent_path() : fs::current_path();
  }
  std::string flags;
  if (vm->count("keyset-version"))
    flags += "version " + std::to_string((*vm)["keyset-version"].as<uint64_t>()) + "\n";
  if (vm->count("expires-days")) {
    flags += "expires-days " + std::to_string((*vm)["expires-days"].as<uint64_t>()) + "\n";
  }
  for (const auto& r : Strings(*vm, "root")) flags += "root " + fs::absolute(r).string() + "\n";
  if (vm->count("root-threshold")) {
    flags += "root-threshold " + std::to_string((*vm)["root-threshold"].as<uint32_t>()) + "\n";
  }
  for (const auto& p : Strings(*vm, "publisher")) {
    // Key paths on the command line are relative to the working directory.
    std::vector<std::string> words = Words(p);
    std::string line = "publisher";
    for (size_t i = 0; i < words.size(); ++i) {
      const bool path = i > 0 && words[i].rfind("threshold=", 0) != 0;
      line += " " + (path ? fs::absolute(words[i]).string() : words[i]);
    }
    flags += line + "\n";
  }
  for (const auto& h : Strings(*vm, "heartbeat")) {
    flags += "heartbeat " + fs::absolute(h).string() + "\n";
  }
  if (vm->count("heartbeat-threshold")) {
    flags +=
        "heartbeat-threshold " + std::to_string((*vm)["heartbeat-threshold"].as<uint32_t>()) + "\n";
  }
  for (const auto& r : Strings(*vm, "reset")) flags += "reset " + r + "\n";
  if (vm->count("comment")) flags += "comment " + (*vm)["comment"].as<std::string>() + "\n";

  v1::KeySet body = OrFail(ParseKeySetDescription(text + flags, base, Clock::Real().NowUnix()),
                           "key set description");
  std::string bytes = MakeUnsignedKeySet(std::move(body));
  const std::vector<SigningKey> signers = LoadSigners(Strings(*vm, "sign"));
  if (!signers.empty()) bytes = SignWith(std::move(bytes), signers);
  const KeySet set = OrFail(KeySet::Decode(bytes), "the key set made");
  const std::string out = (*vm)["out"].as<std::string>();
  OrFail(WriteFileAtomic(out, bytes), "write " + out);
  std::cout << DescribeKeySet(set) << "written to " << out << "\n";
  return 0;
}

int SignMain(int argc, char** argv) {
  const ProgramInfo info{
      "mirrorcast keys sign", "mirrorcast keys sign --set FILE --key KEYFILE... [--out FILE]",
      "Adds a signature by each --key (a secret key file, e.g. the root's, kept offline) to "
      "the key set in FILE, leaving what is signed exactly as it is and any signature already "
      "there in place (a key that already signed is skipped). A root rotation needs the old "
      "root's and the new root's signatures; a root threshold K needs K of them."};
  po::options_description options("Keys sign options");
  options.add_options()("set", po::value<std::string>()->required(), "key set file")(
      "key", po::value<std::vector<std::string>>()->required()->composing(),
      "secret key file to sign with (repeatable)")(
      "out", po::value<std::string>(), "write the signed key set here (default: --set)");
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  const std::string file = (*vm)["set"].as<std::string>();
  std::string bytes = OrFail(ReadSetFile(file), file);
  OrFail(KeySet::Decode(bytes).status(), file);
  bytes = SignWith(std::move(bytes), LoadSigners(Strings(*vm, "key")));
  const KeySet set = OrFail(KeySet::Decode(bytes), "the signed key set");
  const std::string out = vm->count("out") ? (*vm)["out"].as<std::string>() : file;
  OrFail(WriteFileAtomic(out, bytes), "write " + out);
  std::cout << "key set version " << set.version() << ": " << set.signed_set().signatures_size()
            << " signature(s), written to " << out << "\n";
  return 0;
}

int ShowMain(int argc, char** argv) {
  const ProgramInfo info{
      "mirrorcast keys show",
      "mirrorcast keys show --set FILE [--root-key PUB]... [--current FILE]",
      "Prints a key set in words and checks its signatures: against its own root always, and "
      "against --root-key (the root a mirror or broker starts from) or the root of --current "
      "(the key set it holds now), saying whether they would accept it now and why not. "
      "Exit codes: 0 printed and acceptable (or nothing to check it against), 1 refused, "
      "2 usage or file error."};
  po::options_description options("Keys show options");
  options.add_options()("set", po::value<std::string>()->required(), "key set file")(
      "root-key", po::value<std::vector<std::string>>()->composing(),
      "root public key file it must be signed by (as --root-key of a daemon)")(
      "current", po::value<std::string>(), "the key set a verifier holds now");
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  const std::string file = (*vm)["set"].as<std::string>();
  const KeySet set = OrFail(KeySet::Decode(OrFail(ReadSetFile(file), file)), file);
  std::cout << DescribeKeySet(set);
  std::cout << "  signed by its own root: " << set.SignedBy(set.root()) << " of "
            << set.root().threshold << " required\n";
  std::optional<KeySet> current;
  if (vm->count("current")) {
    const std::string cur = (*vm)["current"].as<std::string>();
    current = OrFail(KeySet::Decode(OrFail(ReadSetFile(cur), cur)), cur);
  }
  SignerGroup anchor;
  for (const auto& pub : Strings(*vm, "root-key")) OrFail(anchor.keys.AddFile(pub), pub);
  if (!current && anchor.keys.empty()) {
    std::cout << "  (give --root-key or --current to check it as a verifier would)\n";
    return 0;
  }
  const Status verdict =
      CheckKeySetUpdate(current ? &*current : nullptr, anchor, set, Clock::Real().NowUnix());
  if (!verdict.ok() && verdict.code() != Status::Code::kAlreadyExists) {
    std::cout << "  REFUSED: " << verdict.message() << "\n";
    return 1;
  }
  std::cout << "  accepted: " << (verdict.ok() ? "valid update" : verdict.message()) << "\n";
  return 0;
}

int PublishMain(int argc, char** argv) {
  const ProgramInfo info{
      "mirrorcast keys publish",
      "mirrorcast keys publish --broker HOST:PORT --set FILE (--curve-key KEYFILE --broker-key "
      "PUBFILE | --insecure-plaintext) [--timeout S]",
      "Uploads a signed key set to a broker started with --root-key. The broker checks it "
      "against its current root (newer version, not expired, signed by the current root and "
      "its own) before it stores it, then hands it to every mirror (they check it the same "
      "way). Its CURVE key must be on the broker's allow-list as 'publish NAME'. Exit codes: "
      "0 stored (or already current), 1 refused, 2 usage error, 3 broker unreachable or timed "
      "out."};
  po::options_description options("Keys publish options");
  options.add_options()("broker", po::value<std::string>()->required(),
                        "broker control endpoint, HOST:PORT")(
      "set", po::value<std::string>()->required(), "signed key set file")(
      "timeout", po::value<double>()->default_value(10), "seconds to wait for the broker");
  options.add(ClientTransportOptions());
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  const ClientTransport transport = ClientTransportFromOptions(*vm, info.name);
  Result<HostPort> broker = ParseHostPort((*vm)["broker"].as<std::string>());
  if (!broker.ok()) Fail("bad --broker: " + broker.status().message());
  const auto timeout = TimeoutOption(*vm);
  const std::string file = (*vm)["set"].as<std::string>();
  const std::string bytes = OrFail(ReadSetFile(file), file);
  const KeySet set = OrFail(KeySet::Decode(bytes), file);
  zmq::context_t context;
  Result<uint64_t> version = Status::Internal("not sent");
  {
    ControlClient control(context, *broker, transport);
    version = control.PublishKeySet(bytes, timeout);
  }
  if (!version.ok()) {
    const Status s = DescribeBrokerFailure(version.status(), *broker, "key set publish", timeout);
    std::cerr << info.name << ": error: " << s.message() << "\n";
    return PublishExitCode(s);
  }
  std::cout << "broker " << broker->ToString() << " holds key set version " << *version << "\n";
  return *version == set.version() ? 0 : 1;
}

}  // namespace

Result<v1::KeySet> ParseKeySetDescription(std::string_view text, const fs::path& base,
                                          int64_t now_unix) {
  v1::KeySet body;
  body.set_issued_unix(now_unix);
  bool have_version = false;
  bool have_expiry = false;
  std::vector<std::pair<std::string, std::vector<std::string>>> resets;
  std::istringstream in{std::string(text)};
  int number = 0;
  for (std::string raw; std::getline(in, raw);) {
    ++number;
    const std::string where = "line " + std::to_string(number);
    if (const size_t hash = raw.find('#'); hash != std::string::npos) raw.resize(hash);
    std::vector<std::string> w = Words(raw);
    if (w.empty()) continue;
    const std::string& what = w[0];
    auto need = [&](size_t at_least) -> Status {
      if (w.size() < at_least + 1) {
        return Status::InvalidArgument(where + ": '" + what + "' needs " +
                                       std::to_string(at_least) + " argument(s)");
      }
      return Status::Ok();
    };
    if (what == "version") {
      MC_RETURN_IF_ERROR(need(1));
      MC_ASSIGN_OR_RETURN(uint64_t v, Number(w[1], where));
      body.set_version(v);
      have_version = true;
    } else if (what == "expires-days") {
      MC_RETURN_IF_ERROR(need(1));
      MC_ASSIGN_OR_RETURN(uint64_t days, Number(w[1], where));
      if (days == 0 || days > 36500) return Status::InvalidArgument(where + ": 1-36500 days");
      body.set_expires_unix(now_unix + static_cast<int64_t>(days) * kSecondsPerDay);
      have_expiry = true;
    } else if (what == "expires") {
      MC_RETURN_IF_ERROR(need(1));
      MC_ASSIGN_OR_RETURN(uint64_t at, Number(w[1], where));
      body.set_expires_unix(static_cast<int64_t>(at));
      have_expiry = true;
    } else if (what == "root" || what == "heartbeat") {
      MC_RETURN_IF_ERROR(need(1));
      v1::KeyGroup* group = what == "root" ? body.mutable_root() : body.mutable_heartbeat();
      for (size_t i = 1; i < w.size(); ++i) {
        MC_RETURN_IF_ERROR(AddKey(base, w[i], group).WithContext(where));
      }
    } else if (what == "root-threshold" || what == "heartbeat-threshold") {
      MC_RETURN_IF_ERROR(need(1));
      MC_ASSIGN_OR_RETURN(uint64_t k, Number(w[1], where));
      (what == "root-threshold" ? body.mutable_root() : body.mutable_heartbeat())
          ->set_threshold(static_cast<uint32_t>(std::min<uint64_t>(k, 1000)));
    } else if (what == "publisher") {
      MC_RETURN_IF_ERROR(need(2));
      v1::PublisherRule* rule = body.add_publishers();
      std::istringstream patterns(w[1]);
      for (std::string p; std::getline(patterns, p, ',');) {
        if (!p.empty()) rule->add_repos(p);
      }
      for (size_t i = 2; i < w.size(); ++i) {
        if (w[i].rfind("threshold=", 0) == 0) {
          MC_ASSIGN_OR_RETURN(uint64_t k, Number(w[i].substr(10), where));
          rule->mutable_signers()->set_threshold(
              static_cast<uint32_t>(std::min<uint64_t>(k, 1000)));
        } else {
          MC_RETURN_IF_ERROR(AddKey(base, w[i], rule->mutable_signers()).WithContext(where));
        }
      }
    } else if (what == "reset") {
      MC_RETURN_IF_ERROR(need(2));
      if (w.size() > 4) return Status::InvalidArgument(where + ": reset REPO FLOOR [SINCE]");
      resets.emplace_back(where, std::vector<std::string>(w.begin() + 1, w.end()));
    } else if (what == "comment") {
      const size_t at = raw.find("comment") + 7;
      std::string comment = raw.substr(at);
      while (!comment.empty() && comment.front() == ' ') comment.erase(0, 1);
      while (!comment.empty() && (comment.back() == ' ' || comment.back() == '\r')) {
        comment.pop_back();
      }
      body.set_comment(comment);
    } else {
      return Status::InvalidArgument(where + ": unknown statement '" + what + "'");
    }
  }
  if (!have_version) return Status::InvalidArgument("no 'version N'");
  if (!have_expiry) return Status::InvalidArgument("no 'expires-days D' (or 'expires UNIX')");
  for (const auto& [where, args] : resets) {
    v1::SerialReset* reset = body.add_resets();
    reset->set_repo(args[0]);
    MC_ASSIGN_OR_RETURN(uint64_t at_floor, Number(args[1], where));
    reset->set_floor(at_floor);
    uint64_t since = body.version();
    if (args.size() == 3) {
      MC_ASSIGN_OR_RETURN(since, Number(args[2], where));
    }
    reset->set_since_version(since);
  }
  // The same checks every verifier makes of its shape.
  MC_RETURN_IF_ERROR(KeySet::Decode(MakeUnsignedKeySet(body)).status());
  return body;
}

int KeysMain(int argc, char** argv) {
  struct Sub {
    const char* name;
    int (*main)(int, char**);
    const char* summary;
  };
  static constexpr Sub kSubs[] = {
      {"make", MakeMain, "write a key set from a description or flags (optionally signed)"},
      {"sign", SignMain, "add signatures (root keys) to a key set"},
      {"show", ShowMain, "print a key set and check it against a root or the current set"},
      {"publish", PublishMain, "upload a signed key set to a broker"},
  };
  const std::string first = argc >= 2 ? argv[1] : "";
  for (const Sub& sub : kSubs) {
    if (first == sub.name) return sub.main(argc - 1, argv + 1);
  }
  std::ostream& out = (first == "--help" || first == "-h") ? std::cout : std::cerr;
  out << "Usage: mirrorcast keys SUBCOMMAND [options]\n\n"
      << "Key sets for brokers and mirrors started with --root-key: which keys may sign events "
         "of which repos and heartbeats, signed by an offline root key.\n\nSubcommands:\n";
  for (const Sub& sub : kSubs) {
    out << "  " << sub.name << std::string(9 - std::string(sub.name).size(), ' ') << sub.summary
        << "\n";
  }
  out << "\nRun 'mirrorcast keys SUBCOMMAND --help' for its options.\n";
  if (first == "--help" || first == "-h") return 0;
  if (!first.empty()) std::cerr << "mirrorcast keys: error: unknown subcommand '" << first << "'\n";
  return 2;
}

}  // namespace mirrorcast
