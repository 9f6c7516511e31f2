// Early-return helpers for absl::Status / absl::StatusOr, as in Abseil-based codebases.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FTD_CONCAT_INNER_(a, b) a##b
#define FTD_CONCAT_(a, b) FTD_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define FTD_RETURN_IF_ERROR(expr)                 \
  do {                                            \
    ::absl::Status ftd_status_ = (expr);          \
    if (!ftd_status_.ok()) return ftd_status_;    \
  } while (0)

// `lhs = value of expr`, or returns its status when not OK.
#define FTD_ASSIGN_OR_RETURN(lhs, expr) \
  FTD_ASSIGN_OR_RETURN_IMPL_(FTD_CONCAT_(ftd_statusor_, __LINE__), lhs, expr)
#define FTD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return std::move(tmp).status();   \
  lhs = std::move(tmp).value()
