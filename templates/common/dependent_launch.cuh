#pragma once
// Programmatic dependent launch (sm_90 and later). On those GPUs the host launches every kernel
// with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (runtime/module.cpp), so a kernel
// may start while the kernel before it in the stream is still running: its launch and set-up
// (barriers, tensor-map prefetch) then hide under that kernel's last tiles instead of following
// its completion. The contract every kernel template keeps: nothing before wait_for_prior_kernels()
// reads or writes global memory, since until then the previous kernel may still be writing what
// this one reads, or reading what it writes. On older GPUs both calls compile to nothing.

namespace moejit {

// Returns once every kernel before this one in the stream has completed and its writes are
// visible (at once where the kernel was launched without the attribute). Then lets the next
// kernel in the stream launch: its blocks still wait here for this kernel's completion, and can
// only take a multiprocessor this kernel's blocks have left, so this never delays our own blocks.
// Signalling only after the wait means that once a kernel runs, every kernel two or more places
// before it in the stream has completed.
__device__ __forceinline__ void wait_for_prior_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

}  // namespace moejit
