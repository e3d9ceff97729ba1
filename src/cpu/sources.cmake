# The CPU backend's sources, included by the top-level CMakeLists.txt (paths from the project root).
# Each instruction set lives in its own file compiled with that ISA's flags; kernels.cpp picks one
# at run time with __builtin_cpu_supports, so the library still runs on CPUs without AVX.
set(FLEXATTN_CPU_SOURCES
  ${PROJECT_SOURCE_DIR}/src/cpu/threads.cpp
  ${PROJECT_SOURCE_DIR}/src/cpu/append_kv.cpp
  ${PROJECT_SOURCE_DIR}/src/cpu/kernels.cpp
  ${PROJECT_SOURCE_DIR}/src/cpu/kernels_portable.cpp)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86)$"
   AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(_flexattn_avx2 ${PROJECT_SOURCE_DIR}/src/cpu/kernels_avx2.cpp)
  set(_flexattn_avx512 ${PROJECT_SOURCE_DIR}/src/cpu/kernels_avx512.cpp)
  if(EXISTS ${_flexattn_avx2} AND EXISTS ${_flexattn_avx512})
    list(APPEND FLEXATTN_CPU_SOURCES ${_flexattn_avx2} ${_flexattn_avx512})
    set_source_files_properties(${_flexattn_avx2} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
    set_source_files_properties(${_flexattn_avx512} PROPERTIES
      COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx2;-mfma;-mf16c")
    # kernels.cpp dispatches to the two tables; the define tells every file that they exist.
    set_source_files_properties(${PROJECT_SOURCE_DIR}/src/cpu/kernels.cpp ${_flexattn_avx2}
      ${_flexattn_avx512} PROPERTIES COMPILE_DEFINITIONS FLEXATTN_CPU_X86=1)
  endif()
endif()
