// Numbers as operators read them in logs and progress lines.
#pragma once

#include <cstdint>
#include <string>

namespace mirrorcast {

// "512 B", "1.5 KiB", "3.2 GiB".
std::string HumanBytes(double bytes);

// "42s", "5m", "3h", "2d" (whole units, rounded down).
std::string ShortAge(int64_t seconds);

// A short delay: "0.08 s", "4.20 s", "42 s", then as ShortAge.
std::string ShortDelay(double seconds);

}  // namespace mirrorcast
