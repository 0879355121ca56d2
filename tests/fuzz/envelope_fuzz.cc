// Fuzzes the signed-envelope decoder (OpenEnvelope) and the event checks
// (CheckRepoChanged) that run on whatever opens.
//
// Random bytes essentially never carry a valid Ed25519 signature, so each
// input is tried twice: as a whole Envelope from an untrusted peer, and as the
// payload of an envelope correctly signed by the trusted key. The second form
// is what a compromised-but-trusted signer or a buggy publisher could send; it
// drives the SignedPayload parser and CheckRepoChanged with hostile content.
#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto/keys.h"
#include "core/crypto/sha256.h"
#include "core/manifest/manifest.h"
#include "core/wire/envelope.h"
#include "proto/mirrorcast.pb.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/fuzz/quiet_logs.h"
#include "tests/fuzz/scratch_dir.h"

#ifndef MIRRORCAST_FUZZ_ENTRY
#define MIRRORCAST_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

namespace mirrorcast::fuzz {
namespace {

// The seeds' "now": events are published at it and expire a day later.
constexpr int64_t kNow = 1'700'000'000;

// A fixed key, so seeds (and a corpus saved by libFuzzer) stay valid from one
// run to the next. Loaded through the real key-file parser.
const SigningKey& Signer() {
  static const SigningKey key = [] {
    const std::filesystem::path file = Scratch() / "envelope-signer.key";
    WriteScratchFile(file,
                     "mirrorcast-ed25519-secret-v1 "
                     "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n");
    ::chmod(file.c_str(), 0600);
    auto loaded = SigningKey::LoadFile(file);
    if (!loaded.ok()) __builtin_trap();
    return std::move(loaded).value();
  }();
  return key;
}

const TrustStore& Trust() {
  static const TrustStore trust = [] {
    TrustStore t;
    t.Add(Signer().public_key());
    return t;
  }();
  return trust;
}

// What a verifier does with an envelope: open it, then check its event.
void Verify(std::string_view envelope_bytes) {
  auto opened = OpenEnvelope(envelope_bytes, Trust());
  if (!opened.ok()) return;
  // Only what the trusted key signed can open.
  if (opened->key_id != Signer().public_key().key_id()) __builtin_trap();
  const v1::SignedPayload& payload = opened->payload;
  if (payload.protocol_version() != kProtocolVersion) __builtin_trap();
  if (!payload.has_repo_changed()) return;
  const v1::RepoChanged& event = payload.repo_changed();
  for (int64_t now : {int64_t{0}, kNow, INT64_MAX, INT64_MIN}) {
    if (!CheckRepoChanged(event, now).ok()) continue;
    // An accepted event carries only safe paths, each once.
    for (const v1::Change& change : event.changes()) {
      if (change.entry().path().empty() || change.entry().path().front() == '/') __builtin_trap();
    }
  }
  // What a mirror then does with it: apply the changes to a manifest.
  Manifest manifest(event.repo(), event.previous_serial());
  const std::string before = manifest.Digest();
  if (!manifest.ApplyChanges(event.changes()).ok() && manifest.Digest() != before) {
    __builtin_trap();  // a failed apply must leave the manifest unchanged
  }
}

// An envelope whose payload is `payload_bytes` verbatim, signed by Signer().
std::string SignRaw(std::string_view payload_bytes) {
  std::string signed_bytes(kEnvelopeDomain);
  signed_bytes.append(payload_bytes);
  v1::Envelope envelope;
  envelope.set_protocol_version(kProtocolVersion);
  envelope.set_payload(std::string(payload_bytes));
  envelope.set_signature(Signer().Sign(signed_bytes));
  envelope.set_key_id(Signer().public_key().key_id());
  return envelope.SerializeAsString();
}

v1::FileEntry File(const std::string& path, const std::string& content) {
  v1::FileEntry e;
  e.set_path(path);
  e.set_kind(v1::ENTRY_FILE);
  e.set_size(content.size());
  e.set_sha256(Sha256Of(content));
  e.set_mode(0644);
  e.set_mtime(kNow - 60);
  return e;
}

v1::SignedPayload RepoChangedPayload() {
  v1::SignedPayload payload;
  v1::RepoChanged* event = payload.mutable_repo_changed();
  event->set_repo("debian-main");
  event->set_serial(42);
  event->set_previous_serial(41);
  event->set_published_unix(kNow);
  event->set_expires_unix(kNow + 86400);
  event->set_manifest_entries(4);
  v1::Change* added = event->add_changes();
  added->set_kind(v1::CHANGE_ADDED);
  *added->mutable_entry() = File("pool/main/h/hello/hello_2.10.deb", "hello 2.10");
  v1::Change* modified = event->add_changes();
  modified->set_kind(v1::CHANGE_MODIFIED);
  *modified->mutable_entry() = File("dists/stable/Release", "release v2");
  modified->set_previous_sha256(Sha256Of("release v1"));
  v1::Change* link = event->add_changes();
  link->set_kind(v1::CHANGE_ADDED);
  link->mutable_entry()->set_path("dists/current");
  link->mutable_entry()->set_kind(v1::ENTRY_SYMLINK);
  link->mutable_entry()->set_mode(0777);
  link->mutable_entry()->set_symlink_target("../dists/stable");
  v1::Change* dir = event->add_changes();
  dir->set_kind(v1::CHANGE_ADDED);
  dir->mutable_entry()->set_path("pool/main/h");
  dir->mutable_entry()->set_kind(v1::ENTRY_DIRECTORY);
  dir->mutable_entry()->set_mode(0755);
  v1::Change* deleted = event->add_changes();
  deleted->set_kind(v1::CHANGE_DELETED);
  deleted->mutable_entry()->set_path("pool/main/h/hello/hello_2.9.deb");
  deleted->mutable_entry()->set_kind(v1::ENTRY_FILE);
  Manifest resulting("debian-main", 42);
  resulting.Put(added->entry());
  event->set_manifest_sha256(resulting.Digest());
  return payload;
}

}  // namespace

std::vector<std::string> EnvelopeSeeds() {
  std::vector<v1::SignedPayload> payloads;
  payloads.push_back(RepoChangedPayload());
  {
    v1::SignedPayload empty_event;  // no changes at all
    v1::RepoChanged* event = empty_event.mutable_repo_changed();
    event->set_repo("r");
    event->set_serial(1);
    event->set_manifest_sha256(Manifest().Digest());
    payloads.push_back(empty_event);
  }
  {
    v1::SignedPayload heartbeat;
    v1::Heartbeat* hb = heartbeat.mutable_heartbeat();
    hb->set_origin("origin-1");
    hb->set_issued_unix(kNow);
    hb->set_expires_unix(kNow + 300);
    v1::RepoSerial* repo = hb->add_repos();
    repo->set_repo("debian-main");
    repo->set_serial(42);
    repo->set_manifest_sha256(std::string(32, '\x5a'));
    payloads.push_back(heartbeat);
  }
  {
    v1::SignedPayload recall;
    v1::Recall* r = recall.mutable_recall();
    r->set_repo("debian-main");
    r->set_serial(43);
    r->set_target_serial(40);
    r->set_issued_unix(kNow);
    r->set_expires_unix(kNow + 3600);
    r->set_reason("bad upload");
    payloads.push_back(recall);
  }
  std::vector<std::string> seeds;
  for (const v1::SignedPayload& payload : payloads) {
    // As a whole envelope, and as bare payload bytes for the signed form.
    seeds.push_back(SealEnvelope(payload, Signer()));
    v1::SignedPayload versioned = payload;
    versioned.set_protocol_version(kProtocolVersion);
    seeds.push_back(versioned.SerializeAsString());
  }
  return seeds;
}

}  // namespace mirrorcast::fuzz

extern "C" int MIRRORCAST_FUZZ_ENTRY(const uint8_t* data, size_t size) {
  mirrorcast::fuzz::QuietLibraryLogs();
  using namespace mirrorcast::fuzz;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Verify(bytes);
  Verify(SignRaw(bytes));
  return 0;
}
