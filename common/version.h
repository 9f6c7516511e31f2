#pragma once

namespace ftd {
// The project version, from CMake's project(VERSION).
inline constexpr const char* kVersion = FTD_VERSION;
}  // namespace ftd
