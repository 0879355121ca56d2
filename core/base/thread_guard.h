// Every thread a daemon starts runs its body through RunGuarded: an
// exception escaping the body (a socket call that throws, bad_alloc) would
// otherwise call std::terminate, and a loop that just returned on an error
// would leave a process that looks alive while serving nothing. The caller
// turns a failed Status into "stop the whole daemon with a non-zero exit"
// (or a failed item, for worker threads).
#pragma once

#include <functional>
#include <string_view>

#include "core/base/status.h"

namespace mirrorcast {

// Runs `body`; an exception from it comes back as an Internal status naming
// `thread_name` and the exception's text. Never throws.
Status RunGuarded(std::string_view thread_name, const std::function<Status()>& body) noexcept;

}  // namespace mirrorcast
