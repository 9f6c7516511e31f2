# LibTorch from the installed torch wheel (torch.utils.cmake_prefix_path), on the development
# machine (PyPI wheel, used on CPU) and on the GPU machine (torch 2.11+cu130) alike.
find_package(Python3 COMPONENTS Interpreter REQUIRED)
execute_process(
  COMMAND ${Python3_EXECUTABLE} -c "import torch, sys; sys.stdout.write(torch.utils.cmake_prefix_path + ';' + torch.__version__ + ';' + str(torch.version.cuda))"
  OUTPUT_VARIABLE _torch_info RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "python3 cannot import torch: run scripts/setup.sh first")
endif()
list(GET _torch_info 0 FTD_TORCH_PREFIX)
list(GET _torch_info 1 FTD_TORCH_VERSION)
list(GET _torch_info 2 FTD_TORCH_CUDA)
list(APPEND CMAKE_PREFIX_PATH ${FTD_TORCH_PREFIX})
message(STATUS "ftd: torch ${FTD_TORCH_VERSION} (CUDA ${FTD_TORCH_CUDA}) from ${FTD_TORCH_PREFIX}")

# Decide on CUDA before Torch's config runs: it probes the toolkit when torch has CUDA.
set(FTD_HAVE_CUDA OFF)
if(NOT FTD_CUDA STREQUAL "OFF" AND NOT FTD_TORCH_CUDA STREQUAL "None")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    execute_process(COMMAND ${CMAKE_CUDA_COMPILER} --version OUTPUT_VARIABLE _nvcc_ver)
    string(REGEX MATCH "release ([0-9]+)\\.([0-9]+)" _m "${_nvcc_ver}")
    set(_nvcc_major ${CMAKE_MATCH_1})
    string(REGEX MATCH "^([0-9]+)" _tm "${FTD_TORCH_CUDA}")
    if(_nvcc_major STREQUAL CMAKE_MATCH_1)
      set(FTD_HAVE_CUDA ON)
    else()
      message(STATUS "ftd: nvcc is CUDA ${_nvcc_major} but torch was built for CUDA ${FTD_TORCH_CUDA}: kernels off")
    endif()
  endif()
endif()
if(FTD_CUDA STREQUAL "ON" AND NOT FTD_HAVE_CUDA)
  message(FATAL_ERROR "FTD_CUDA=ON but no nvcc matching torch's CUDA (${FTD_TORCH_CUDA}) was found")
endif()
if(FTD_HAVE_CUDA)
  # sm_90a only (H100/H200): Torch's config would otherwise add every architecture it knows.
  set(TORCH_CUDA_ARCH_LIST "9.0a")
  set(ENV{TORCH_CUDA_ARCH_LIST} "9.0a")
  set(CMAKE_CUDA_ARCHITECTURES 90a CACHE STRING "")
  set(CMAKE_CUDA_STANDARD 17)
  enable_language(CUDA)
else()
  # Torch's config otherwise searches for a CUDA toolkit it will not use.
  set(CAFFE2_USE_CUDNN OFF)
endif()
message(STATUS "ftd: CUDA kernels ${FTD_HAVE_CUDA}")

find_package(Torch REQUIRED)
# Torch defines its own protobuf::libprotobuf target; the service links Debian's explicitly.
