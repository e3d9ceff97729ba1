# GPU benchmarks. Included by bench/CMakeLists.txt only when the CUDA backend is on.
#
#   bench/*.cu            one executable per file, named after it (as bench/*.cpp), nvcc-compiled
#   flexattn_bench_gpu    flexattn's side of the peer benchmark (bench/gpu/bench_gpu.cpp);
#                         bench/gpu_peers.py and bench/merge_gpu.py are its Python half, all run by
#                         tools/gpu/run_all.sh on the device machine.
#
# The peer benchmark is host-compiled on purpose: it runs the library's prebuilt stock-variant kernels,
# so it adds no nvcc time to the build (a .cu would instantiate every variant x head dim x dtype
# again). It needs the CUDA runtime only for events.
find_package(CUDAToolkit REQUIRED)


add_executable(flexattn_bench_gpu ${CMAKE_CURRENT_LIST_DIR}/gpu/bench_gpu.cpp)
target_include_directories(flexattn_bench_gpu PRIVATE ${PROJECT_SOURCE_DIR})  # tools/stock_variants.h
target_link_libraries(flexattn_bench_gpu PRIVATE flexattn::flexattn CUDA::cudart)
set_target_properties(flexattn_bench_gpu PROPERTIES RUNTIME_OUTPUT_DIRECTORY
                                                    ${CMAKE_BINARY_DIR}/gpu)

# create_block_mask on the GPU (bench_block_mask_gpu.cu): kernel times with cudaEvents and end to
# end. A .cu on purpose: it also times an opaque mask_mod, which only nvcc can instantiate.
add_executable(bench_block_mask_gpu ${CMAKE_CURRENT_LIST_DIR}/bench_block_mask_gpu.cu)
target_link_libraries(bench_block_mask_gpu PRIVATE flexattn::flexattn CUDA::cudart)
set_target_properties(bench_block_mask_gpu PROPERTIES RUNTIME_OUTPUT_DIRECTORY
                                                      ${CMAKE_BINARY_DIR}/gpu)

# Any other bench/*.cu: one executable per file, named after it, beside the ones above.
file(GLOB FLEXATTN_BENCH_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cu)
foreach(src ${FLEXATTN_BENCH_CUDA_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  if(NOT TARGET ${name})
    add_executable(${name} ${src})
    target_link_libraries(${name} PRIVATE flexattn::flexattn flexattn_reference CUDA::cudart)
    set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/gpu)
  endif()
endforeach()
