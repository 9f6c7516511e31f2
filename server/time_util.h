// Conversions between absl::Time and google.protobuf.Timestamp at microsecond precision (the
// precision the store orders by).
#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"

namespace ftd::server {

inline google::protobuf::Timestamp ToProtoTime(absl::Time t) {
  const int64_t us = absl::ToUnixMicros(t);
  google::protobuf::Timestamp ts;
  ts.set_seconds(us / 1000000);
  ts.set_nanos(static_cast<int32_t>(us % 1000000) * 1000);
  return ts;
}

inline int64_t ToUnixMicros(const google::protobuf::Timestamp& ts) {
  return ts.seconds() * 1000000 + ts.nanos() / 1000;
}

inline absl::Time FromProtoTime(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixMicros(ToUnixMicros(ts));
}

}  // namespace ftd::server
