// SHA-256 (OpenSSL) as lowercase hex: stable across processes, unlike absl::Hash, so hashes can
// be stored (idempotency keys) and compared later.
#pragma once

#include <string>
#include "absl/strings/string_view.h"

namespace ftd::server {

std::string Sha256Hex(absl::string_view data);

}  // namespace ftd::server
