/* host_device.h: the one macro that lets numerics headers compile for the CPU and for CUDA. */
#pragma once

#if defined(__CUDACC__)
#  define KBIT_HD __host__ __device__ __forceinline__
#else
#  define KBIT_HD inline
#endif
