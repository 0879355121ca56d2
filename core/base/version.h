#pragma once

namespace mirrorcast {

// The release version of every mirrorcast program (also --version).
inline constexpr const char* kVersion = "0.1.0";

}  // namespace mirrorcast
