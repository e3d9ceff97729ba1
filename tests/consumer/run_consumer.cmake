# Configures, builds and runs the consumer project (tests/consumer) against this build of
# flexattn. cmake -P with:
#   MODE            package | subdirectory
#   SOURCE_DIR      the flexattn source tree
#   BINARY_DIR      the flexattn build tree, already built (package mode installs it into
#                   WORK_DIR/prefix)
#   WORK_DIR        scratch directory, wiped first
#   GENERATOR, CXX_COMPILER, BUILD_TYPE, EXTRA_FLAGS (e.g. the sanitizer flags of the main build)
cmake_minimum_required(VERSION 3.24)

function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer (${MODE}): ${step} failed (${rc}):\n${out}")
  endif()
  message(STATUS "consumer (${MODE}): ${step} ok")
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(args -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=${BUILD_TYPE} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    -DFLEXATTN_CONSUMER_MODE=${MODE}
    "-DCMAKE_CXX_FLAGS=${EXTRA_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${EXTRA_FLAGS}")

if(MODE STREQUAL "package")
  # Installs what the main build made (build the whole project before ctest: the install rules
  # name the library and the CLI). A test does not rebuild the tree it tests.
  run("install (if this fails, build the project first)"
      ${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)
  list(APPEND args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  # The consumer compiles its own copy of the library: host-only, to keep this test short.
  list(APPEND args -DFLEXATTN_SOURCE_DIR=${SOURCE_DIR} -DFLEXATTN_CUDA=OFF)
endif()

run("configure" ${CMAKE_COMMAND} ${args})
run("build" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run("run" ${WORK_DIR}/build/consumer)
message(STATUS "${last_output}")
