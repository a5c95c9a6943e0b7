#pragma once
// Programmatic dependent launch (sm_90 and later). On those GPUs the host launches every kernel
// with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (runtime/module.cpp): the next
// kernel in the stream is launched as this one's last blocks exit rather than after the
// kernel's completion is processed, and its blocks set up (barriers, tensor-map prefetch) while
// the last writes drain. The contract every kernel template keeps: nothing before
// wait_for_prior_kernels() reads or writes global memory, since until then the previous kernel
// may still be writing what this one reads, or reading what it writes. On older GPUs it compiles
// to nothing.
//
// No kernel signals its dependents early (griddepcontrol.launch_dependents): their blocks would
// then wait on the multiprocessors beside ours for the whole of our run, and a MoE block at 8192
// tokens measured 1-11% slower that way (bench/RESULTS.md, thirty-fourth session).

namespace moejit {

// Returns once every kernel before this one in the stream has completed and its writes are
// visible (at once where the kernel was launched without the attribute).
__device__ __forceinline__ void wait_for_prior_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace moejit
