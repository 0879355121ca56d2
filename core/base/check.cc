#include "core/base/check.h"

#include <cstdio>
#include <cstdlib>

namespace mirrorcast {

void CheckFailed(const char* file, int line, const char* condition, const char* message) {
  // Plain stdio, not Boost.Log: the logging core may be what broke, and this
  // line must reach the journal before the abort.
  std::fprintf(stderr, "fatal: internal check failed at %s:%d: %s (%s)\n", file, line, condition,
               message);
  std::fflush(stderr);
  std::abort();
}

}  // namespace mirrorcast
