# Helpers shared by every component's CMakeLists.

# ftd_glob_sources(VAR DIR): the .cc files of a component, excluding *_main.cc and *_test.cc,
# so components grow by adding files, without editing shared build files.
function(ftd_glob_sources var dir)
  file(GLOB_RECURSE srcs CONFIGURE_DEPENDS ${dir}/*.cc)
  list(FILTER srcs EXCLUDE REGEX "(_main|_test)\\.cc$")
  set(${var} ${srcs} PARENT_SCOPE)
endfunction()

set(FTD_WARNINGS -Wall -Wextra -Wno-unused-parameter)

# ftd_component_library(NAME DIR DEPS...): a static library of DIR's sources (an interface
# library while the component has none yet), with the project's include root.
function(ftd_component_library name dir)
  ftd_glob_sources(srcs ${dir})
  if(srcs)
    add_library(${name} STATIC ${srcs})
    target_compile_options(${name} PRIVATE ${FTD_WARNINGS})
    target_link_libraries(${name} PUBLIC ${ARGN})
  else()
    add_library(${name} INTERFACE)
    target_link_libraries(${name} INTERFACE ${ARGN})
  endif()
endfunction()
