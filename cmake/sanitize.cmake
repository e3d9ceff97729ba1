# FLEXATTN_SANITIZE=ON builds every target of this project (library, tests, tools) with
# AddressSanitizer and UndefinedBehaviorSanitizer, stopping at the first report. Included by the
# top-level CMakeLists.txt right after project(), before any target is defined.
#
#   cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLEXATTN_CUDA=OFF \
#         -DFLEXATTN_SANITIZE=ON
#   cmake --build build-asan -j2 && ctest --test-dir build-asan -j2 --output-on-failure
#
# Hazard: for a CUDA build only host code is instrumented, and the CUDA runtime needs
# ASAN_OPTIONS=protect_shadow_gap=0 to start under ASan.
option(FLEXATTN_SANITIZE "Build everything with -fsanitize=address,undefined" OFF)

if(FLEXATTN_SANITIZE)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "FLEXATTN_SANITIZE=ON needs GCC or Clang (got ${CMAKE_CXX_COMPILER_ID})")
  endif()
  set(FLEXATTN_SANITIZE_FLAGS
      -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${FLEXATTN_SANITIZE_FLAGS}>")
  # nvcc forwards these to the host compiler: host code of .cu files is instrumented too.
  add_compile_options(
    "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-fsanitize=address,undefined,-fno-omit-frame-pointer,-fno-sanitize-recover=all>")
  add_link_options("$<$<LINK_LANGUAGE:C,CXX,CUDA>:-fsanitize=address,undefined>")
  message(STATUS "flexattn: ASan + UBSan on")
endif()
