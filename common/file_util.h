// Small filesystem helpers with absl::Status errors that name the path.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace ftd {

// The whole file as bytes; NOT_FOUND / INTERNAL naming `path` on failure.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `data` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
// directory. A crash leaves either the old file or the new one, never a torn one.
absl::Status WriteFileAtomically(const std::string& path, const std::string& data);

// fsync of a directory, so that a rename inside it is durable.
absl::Status FsyncDirectory(const std::string& dir);

// Removes a file or a directory tree (no error when it does not exist). Written with nftw:
// libtorch.so exports std::filesystem::remove_all symbols that crash when interposed.
absl::Status RemoveTree(const std::string& path);

}  // namespace ftd
