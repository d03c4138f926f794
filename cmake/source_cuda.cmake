# KBIT_SOURCE_CUDA_ARCHS: a source install for a custom GPU builds the CPU library plus one CUDA variant.
#
#   KBIT_CUDA_ARCHS=87 pip install .          (pyproject.toml maps the variable to this setting)
#   pip install . -C cmake.define.KBIT_SOURCE_CUDA_ARCHS=87
#
# ci/source_cuda.py finds the nvcc (CMAKE_CUDA_COMPILER / CUDACXX when given, else CUDA_HOME, CUDA_PATH, PATH, else
# where ci/build_variant.py looks), maps its release to its matrix.toml row and validates the archs with the row
# validator of ci/matrix.py, all before any CUDA language is enabled; it prints the CUDA configure's arguments,
# derived as ci/matrix.py derives a release row's. The variant is then configured and built as its own CMake build
# (ExternalProject of this same source tree), exactly as `nox -s build-<variant>` builds one: one library per
# configure, so the CUDA toolkit checks, CUDA_ARCHITECTURES and the generated build info stay those of one target,
# and this CPU configure never enables CUDA. Its installed library and manifest join the package.

set(KBIT_SOURCE_CUDA_ARCHS "" CACHE STRING "Compute capabilities of one extra CUDA variant for a source install, e.g. 87")

function(kbit_add_source_cuda archs)
  find_package(Python3 COMPONENTS Interpreter REQUIRED)  # scikit-build-core passes the building interpreter
  set(args --archs "${archs}")
  if(CMAKE_CUDA_COMPILER)
    list(APPEND args --nvcc "${CMAKE_CUDA_COMPILER}")
  elseif(DEFINED ENV{CUDACXX})
    list(APPEND args --nvcc "$ENV{CUDACXX}")
  endif()
  execute_process(COMMAND "${Python3_EXECUTABLE}" "${PROJECT_SOURCE_DIR}/ci/source_cuda.py" ${args}
                  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "KBIT_SOURCE_CUDA_ARCHS=${archs}: nothing was built.\n${err}")
  endif()
  string(STRIP "${out}" out)
  string(REPLACE ";" "|" out "${out}")  # arch lists hold ';': ExternalProject's LIST_SEPARATOR turns | back
  string(REPLACE "\n" ";" cuda_args "${out}")
  set(launcher "")
  if(CMAKE_CXX_COMPILER_LAUNCHER)
    set(launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER}
                 -DCMAKE_CUDA_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER})
  endif()
  set(prefix "${CMAKE_CURRENT_BINARY_DIR}/source-cuda-prefix")
  include(ExternalProject)
  ExternalProject_Add(kbit_source_cuda
    SOURCE_DIR "${PROJECT_SOURCE_DIR}"
    BINARY_DIR "${CMAKE_CURRENT_BINARY_DIR}/source-cuda"
    INSTALL_DIR "${prefix}"
    LIST_SEPARATOR |
    CMAKE_ARGS ${cuda_args} ${launcher} -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=<INSTALL_DIR>
               -DKBIT_INSTALL_DIR=kbit -DKBIT_SOURCE_CUDA_ARCHS=
    INSTALL_COMMAND "${CMAKE_COMMAND}" --install <BINARY_DIR> --strip
    BUILD_ALWAYS ON
    USES_TERMINAL_CONFIGURE ON
    USES_TERMINAL_BUILD ON)
  install(DIRECTORY "${prefix}/kbit/" DESTINATION "${KBIT_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
  message(STATUS "kbit: adding the CUDA variant ${cuda_args}")
endfunction()
