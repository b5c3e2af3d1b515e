// cuda_emu: shared between the emulated runtime and the emulated libraries.
#pragma once
#include <cstddef>
#include <cuda_runtime_api.h>
namespace emu {
bool device_range(const void *p, size_t n); // [p, p+n) inside one live cudaMalloc
bool stream_valid(cudaStream_t s);
void dev_enter(const char *what, const char *where); // device work begins: memory accessible
void dev_leave();                                    // ... ends: canaries checked, memory protected
int error_count();
} // namespace emu
