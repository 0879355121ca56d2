#include "core/base/format.h"

#include <cstdio>

namespace mirrorcast {

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char out[32];
  std::snprintf(out, sizeof out, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return out;
}

std::string ShortAge(int64_t seconds) {
  if (seconds < 60) return std::to_string(seconds) + "s";
  if (seconds < 3600) return std::to_string(seconds / 60) + "m";
  if (seconds < 86400) return std::to_string(seconds / 3600) + "h";
  return std::to_string(seconds / 86400) + "d";
}

std::string ShortDelay(double seconds) {
  if (seconds < 0) seconds = 0;
  char out[32];
  if (seconds < 10) {
    std::snprintf(out, sizeof out, "%.2f s", seconds);
    return out;
  }
  if (seconds < 60) {
    std::snprintf(out, sizeof out, "%.0f s", seconds);
    return out;
  }
  return ShortAge(static_cast<int64_t>(seconds));
}

}  // namespace mirrorcast
