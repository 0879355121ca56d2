// Numbers as operators read them in logs and progress lines.
#pragma once

#include <string>

namespace mirrorcast {

// "512 B", "1.5 KiB", "3.2 GiB".
std::string HumanBytes(double bytes);

}  // namespace mirrorcast
