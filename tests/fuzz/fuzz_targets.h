// The fuzz targets of tests/fuzz, seen from the replay test and the seed tool.
//
// Each <name>_fuzz.cc defines libFuzzer's entry point. Built as a real fuzzer
// (MIRRORCAST_BUILD_FUZZERS, clang) it keeps the name LLVMFuzzerTestOneInput;
// linked together into fuzz_replay_test and fuzz_seeds, each file is compiled
// with -DMIRRORCAST_FUZZ_ENTRY=Fuzz<Name> so the six can share one binary.
//
// A target returns 0 for every input. A bug it detects (a property of the
// code under test that does not hold) is __builtin_trap(): the process dies,
// which both libFuzzer and the replay test report as a failure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

extern "C" {
int FuzzEnvelope(const uint8_t* data, size_t size);
int FuzzManifest(const uint8_t* data, size_t size);
int FuzzDelta(const uint8_t* data, size_t size);
int FuzzPath(const uint8_t* data, size_t size);
int FuzzMessages(const uint8_t* data, size_t size);
int FuzzKeyfile(const uint8_t* data, size_t size);
int FuzzChunks(const uint8_t* data, size_t size);
int FuzzAllowList(const uint8_t* data, size_t size);
int FuzzKeyset(const uint8_t* data, size_t size);
}

namespace mirrorcast::fuzz {

// Valid inputs built in code, deterministic across runs: the starting corpus
// of each target (fuzz_seeds writes them out for libFuzzer).
std::vector<std::string> EnvelopeSeeds();
std::vector<std::string> ManifestSeeds();
std::vector<std::string> DeltaSeeds();
std::vector<std::string> PathSeeds();
std::vector<std::string> MessagesSeeds();
std::vector<std::string> KeyfileSeeds();
std::vector<std::string> ChunksSeeds();
std::vector<std::string> AllowListSeeds();
std::vector<std::string> KeysetSeeds();

}  // namespace mirrorcast::fuzz
