# KBIT_PREBUILT_DIR: assemble a wheel from libraries built elsewhere, instead of compiling.
#
# ci/wheel.py (nox -s wheel, and the release pipeline with libraries from other machines) stages every variant's
# library and build manifest in one folder, checks them, and lets scikit-build-core build the wheel with
#   -C cmake.define.KBIT_PREBUILT_DIR=<folder>  -C cmake.define.KBIT_PREBUILT_FILES=<file;file;...>
# Then this project compiles nothing: CMake installs exactly the listed files into the package folder. The file
# names are computed by ci/matrix.py (library_filename); listing them, rather than globbing the folder, means a
# stray file is never shipped and a missing one fails here with its name. No compiler is needed (a Windows job
# assembling Linux-built libraries, or the reverse, works the same way).

set(KBIT_PREBUILT_DIR "" CACHE PATH "Folder of staged libraries and manifests to install instead of compiling")
set(KBIT_PREBUILT_FILES "" CACHE STRING "The files of KBIT_PREBUILT_DIR to install (libraries and manifests)")

function(kbit_install_prebuilt dir files)
  if(NOT IS_DIRECTORY "${dir}")
    message(FATAL_ERROR "KBIT_PREBUILT_DIR=${dir} is not a folder. Fix: stage the libraries first "
                        "(nox -s wheel, or nox -s wheel -- --prebuilt DIR with a folder that exists).")
  endif()
  if(files STREQUAL "")
    message(FATAL_ERROR "KBIT_PREBUILT_DIR is set but KBIT_PREBUILT_FILES is empty. Fix: build the wheel through "
                        "ci/wheel.py (nox -s wheel), which lists the staged files.")
  endif()
  foreach(name IN LISTS files)
    if(NOT EXISTS "${dir}/${name}")
      message(FATAL_ERROR "KBIT_PREBUILT_FILES names ${name}, which is not in ${dir}. Fix: stage it, or drop the "
                          "variant from the wheel (nox -s wheel -- --variants ...).")
    endif()
    if(name MATCHES "\\.build\\.json$")
      install(FILES "${dir}/${name}" DESTINATION "${KBIT_INSTALL_DIR}")
    else()
      install(PROGRAMS "${dir}/${name}" DESTINATION "${KBIT_INSTALL_DIR}")
    endif()
  endforeach()
  message(STATUS "kbit: installing ${files} from ${dir} (prebuilt; nothing is compiled)")
endfunction()
