// Stand-in for CUDA's cuda_runtime_api.h in host-only builds (DFLASH_TRT_CUDA=OFF).
// The TensorRT headers use only these two opaque handle types from CUDA; they are declared
// exactly as CUDA's driver_types.h declares them, so the plugin ABI is unchanged.
#pragma once

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
