// Communicator's state: the c10d backend it drives. Only the files that create or drive
// backends include this (it pulls in c10d's headers).
#pragma once

#include <string>

#include <torch/csrc/distributed/c10d/Backend.hpp>

#include "engine/dist/communicator.h"

namespace ftd::engine {

struct Communicator::Impl {
  std::string name;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank = 0;
  int size = 1;
  at::Device device = at::kCPU;
};

}  // namespace ftd::engine
