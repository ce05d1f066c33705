# Sets DFLASH_TRT_TENSORRT_INCLUDE_DIR to a directory holding the TensorRT C++ headers.
#
# With -DTensorRT_INCLUDE_DIR=<dir> the given headers are used. Otherwise the TensorRT 10.14.1.48
# headers are taken from the PyPI wheel kernel-lens==2.0.1 (py3-none-any, headers under
# kernel_lens/include/tensorrt/, Apache-2.0): the wheel is downloaded with `pip download --no-deps`
# (never installed: it depends on triton and onnx), checked against a pinned SHA-256 and unpacked
# into DFLASH_TRT_HEADERS_CACHE, which later configures reuse.

set(TensorRT_INCLUDE_DIR "" CACHE PATH "Directory with NvInferRuntime.h; empty: use the kernel-lens wheel's headers")
set(DFLASH_TRT_HEADERS_CACHE "${CMAKE_BINARY_DIR}/_deps/kernel-lens" CACHE PATH
    "Where the kernel-lens wheel is downloaded and unpacked")

set(_kl_version "2.0.1")
set(_kl_sha256 "07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0")

if(TensorRT_INCLUDE_DIR)
    set(DFLASH_TRT_TENSORRT_INCLUDE_DIR "${TensorRT_INCLUDE_DIR}")
else()
    set(DFLASH_TRT_TENSORRT_INCLUDE_DIR "${DFLASH_TRT_HEADERS_CACHE}/include")
    if(NOT EXISTS "${DFLASH_TRT_TENSORRT_INCLUDE_DIR}/NvInferRuntime.h")
        set(_kl_wheel "${DFLASH_TRT_HEADERS_CACHE}/kernel_lens-${_kl_version}-py3-none-any.whl")
        if(NOT EXISTS "${_kl_wheel}")
            find_package(Python3 REQUIRED COMPONENTS Interpreter)
            message(STATUS "Downloading the TensorRT headers: pip download kernel-lens==${_kl_version}")
            execute_process(
                COMMAND "${Python3_EXECUTABLE}" -m pip download --no-deps --only-binary=:all:
                        "kernel-lens==${_kl_version}" -d "${DFLASH_TRT_HEADERS_CACHE}"
                RESULT_VARIABLE _kl_result OUTPUT_QUIET ERROR_VARIABLE _kl_error)
            if(NOT _kl_result EQUAL 0 OR NOT EXISTS "${_kl_wheel}")
                message(FATAL_ERROR "pip download kernel-lens==${_kl_version} failed (${_kl_result}): ${_kl_error}\n"
                                    "Pass -DTensorRT_INCLUDE_DIR=<dir with NvInferRuntime.h> instead.")
            endif()
        endif()
        file(SHA256 "${_kl_wheel}" _kl_actual)
        if(NOT _kl_actual STREQUAL _kl_sha256)
            message(FATAL_ERROR "${_kl_wheel} has SHA-256 ${_kl_actual}, expected ${_kl_sha256}; delete it and retry")
        endif()
        file(ARCHIVE_EXTRACT INPUT "${_kl_wheel}" DESTINATION "${DFLASH_TRT_HEADERS_CACHE}/unpacked"
             PATTERNS "kernel_lens/include/tensorrt/*")
        file(GLOB _kl_headers "${DFLASH_TRT_HEADERS_CACHE}/unpacked/kernel_lens/include/tensorrt/*.h")
        file(COPY ${_kl_headers} DESTINATION "${DFLASH_TRT_TENSORRT_INCLUDE_DIR}")
    endif()
endif()

if(NOT EXISTS "${DFLASH_TRT_TENSORRT_INCLUDE_DIR}/NvInferRuntime.h")
    message(FATAL_ERROR "No NvInferRuntime.h in ${DFLASH_TRT_TENSORRT_INCLUDE_DIR}")
endif()
file(STRINGS "${DFLASH_TRT_TENSORRT_INCLUDE_DIR}/NvInferVersion.h" _trt_major_line
     REGEX "#define (TRT_MAJOR_ENTERPRISE|NV_TENSORRT_MAJOR) +[0-9]+")
string(REGEX MATCH "[0-9]+" _trt_major "${_trt_major_line}")
if(NOT _trt_major OR _trt_major LESS 10)
    message(FATAL_ERROR "TensorRT headers in ${DFLASH_TRT_TENSORRT_INCLUDE_DIR} are not version 10 or newer")
endif()
message(STATUS "TensorRT headers: ${DFLASH_TRT_TENSORRT_INCLUDE_DIR} (major version ${_trt_major})")
