# kbit_portable(<target>): link a Linux library so that it loads on every Linux the platform's wheel tag
# promises (README.md, "Portability", says why this route and not zig's glibc-versioned targets).
#
# - glibc: the floor is matrix.toml's [platforms.linux-*] glibc_floor, read by ci/glibc_pin.py (matrix.toml stays
#   the one place it is written). That script becomes the target's CXX linker launcher: it rewrites the glibc
#   references of the link's objects and of a copy of each static archive (libcudart_static.a) to the newest
#   version at or below the floor, links with the machine's own g++, and fails when the result still asks for
#   a newer GLIBC_ version.
# - libstdc++: no sized operator delete (CXXABI_1.3.9); manylinux2014's libstdc++ stops at CXXABI_1.3.7 and
#   GLIBCXX_3.4.19. ci/portability.py checks every version the result asks for after the build.
function(kbit_portable target)
  if(NOT CMAKE_SYSTEM_NAME STREQUAL "Linux")
    return()
  endif()
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    set(platform "linux-x86_64")
  elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
    set(platform "linux-aarch64")
  else()
    message(FATAL_ERROR "kbit_portable: no matrix.toml platform for Linux on ${CMAKE_SYSTEM_PROCESSOR}. "
                        "Fix: add a [platforms.linux-<cpu>] table with its glibc_floor.")
  endif()
  find_package(Python3 3.10 REQUIRED COMPONENTS Interpreter)
  foreach(tool IN ITEMS NM OBJCOPY)
    if(NOT CMAKE_${tool})
      message(FATAL_ERROR "kbit_portable: CMake found no ${tool} (binutils). Fix: install binutils.")
    endif()
  endforeach()
  set(script "${PROJECT_SOURCE_DIR}/ci/glibc_pin.py")
  set_target_properties(${target} PROPERTIES
    LINKER_LANGUAGE CXX
    CXX_LINKER_LAUNCHER "${Python3_EXECUTABLE};${script};--platform;${platform};--work;${CMAKE_CURRENT_BINARY_DIR}/glibc_pin/${target};--nm;${CMAKE_NM};--objcopy;${CMAKE_OBJCOPY};--")
  set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS
    "${script}" "${PROJECT_SOURCE_DIR}/ci/elfdeps.py" "${PROJECT_SOURCE_DIR}/matrix.toml")
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-fno-sized-deallocation>
    $<$<COMPILE_LANG_AND_ID:CUDA,NVIDIA>:-Xcompiler=-fno-sized-deallocation>)
endfunction()
