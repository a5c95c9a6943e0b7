#pragma once
// Hopper (sm_90a) PTX the fast path uses: mbarriers, TMA tensor loads, proxy fences, register
// reallocation and the wgmma bookkeeping. The wgmma instructions themselves are in mma/sm90_wgmma.cuh.
#include "common/ptx.cuh"

namespace moejit::sm90 {

using uint64 = unsigned long long;

// CUtensorMap without cuda.h: 128 opaque bytes, 64-byte aligned, built on the host by
// cuTensorMapEncodeTiled and passed by value as a __grid_constant__ kernel parameter.
struct alignas(64) TensorMap {
    uint64 opaque[16];
};

// --- mbarrier ---------------------------------------------------------------------------------

__device__ __forceinline__ void mbarrier_init(uint32 barrier, int arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(barrier), "r"(arrivals));
}

// Makes the initialized barriers visible to the TMA unit (async proxy) before first use.
__device__ __forceinline__ void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::); }

// Blocks until the barrier's phase with this parity has completed. A fresh barrier counts its
// "previous" phase (parity 1) as complete, which is what lets producers start on empty slots.
__device__ __forceinline__ void mbarrier_wait(uint32 barrier, int parity) {
    uint32 done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(barrier), "r"(parity)
            : "memory");
    } while (!done);
}

__device__ __forceinline__ void mbarrier_arrive(uint32 barrier) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(barrier) : "memory");
}

// One arrival plus `bytes` the copy engine will deliver before the phase can complete.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32 barrier, uint32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier), "r"(bytes) : "memory");
}

// One arrival on `barrier`, made by the hardware once every cp.async this thread issued before has
// landed: the thread does not wait. "noinc": the arrival is one of those the barrier was initialized with.
__device__ __forceinline__ void cp_async_arrive_noinc(uint32 barrier) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(barrier) : "memory");
}

// --- TMA ----------------------------------------------------------------------------------------

__device__ __forceinline__ void prefetch_tensor_map(const TensorMap& map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64>(&map)) : "memory");
}

// Box at (c0 innermost, c1) -> shared `destination`; completes `bytes` of the barrier's transaction count.
__device__ __forceinline__ void tma_load_2d(uint32 destination, const TensorMap& map, int c0, int c1, uint32 barrier) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            destination),
        "l"(reinterpret_cast<uint64>(&map)), "r"(c0), "r"(c1), "r"(barrier)
        : "memory");
}

__device__ __forceinline__ void tma_load_3d(uint32 destination, const TensorMap& map, int c0, int c1, int c2,
                                            uint32 barrier) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(destination),
        "l"(reinterpret_cast<uint64>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(barrier)
        : "memory");
}

// The same box, written at the same shared offset into every CTA of the cluster named in `ctas`
// (bit i: rank i), completing bytes on the barrier at the same offset in each of them.
__device__ __forceinline__ void tma_load_2d_multicast(uint32 destination, const TensorMap& map, int c0, int c1,
                                                      uint32 barrier, unsigned short ctas) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, "
        "%3}], [%4], %5;\n" ::"r"(destination),
        "l"(reinterpret_cast<uint64>(&map)), "r"(c0), "r"(c1), "r"(barrier), "h"(ctas)
        : "memory");
}

// The 3-D box, written at the same shared offset into every CTA of the cluster named in `ctas`
// (bit i: rank i), completing bytes on the barrier at the same offset in each of them.
__device__ __forceinline__ void tma_load_3d_multicast(uint32 destination, const TensorMap& map, int c0, int c1, int c2,
                                                      uint32 barrier, unsigned short ctas) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, "
        "%3, %4}], [%5], %6;\n" ::"r"(destination),
        "l"(reinterpret_cast<uint64>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(barrier), "h"(ctas)
        : "memory");
}

// An L2 policy for data written once and not read again by this kernel: its lines are the first
// evicted, so that they do not push out the operands that other CTAs are still reading.
__device__ __forceinline__ uint64 evict_first_policy() {
    uint64 policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}

// Box at (c0 innermost, c1, c2) <- shared `source`, in this thread's current bulk group, under an
// L2 policy from createpolicy. Elements past the map's bounds are not written, which clips a tile
// at the matrix's last row and column.
__device__ __forceinline__ void tma_store_3d(const TensorMap& map, uint32 source, int c0, int c1, int c2,
                                             uint64 policy) {
    asm volatile(
        "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group.L2::cache_hint [%0, {%2, %3, %4}], [%1], %5;\n" ::"l"(
            reinterpret_cast<uint64>(&map)),
        "r"(source), "r"(c0), "r"(c1), "r"(c2), "l"(policy)
        : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Until at most `Pending` of this thread's bulk groups have not finished reading shared memory.
template <int Pending>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(Pending) : "memory");
}
// Until every bulk group of this thread has completed, its writes included.
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Four 8x8 b16 matrices from the registers of a warp; lanes 8j..8j+7 give the row addresses of matrix j,
// and each lane holds two columns of one row of each: the layout of an mma / wgmma accumulator fragment.
__device__ __forceinline__ void stmatrix_x4(uint32 address, uint32 r0, uint32 r1, uint32 r2, uint32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

// The same with each matrix transposed on the way: column c of matrix j goes to the row whose address
// lane 8j + c gives, so that an accumulator fragment's columns become rows of memory.
__device__ __forceinline__ void stmatrix_x4_trans(uint32 address, uint32 r0, uint32 r1, uint32 r2, uint32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

// --- clusters -----------------------------------------------------------------------------------

__device__ __forceinline__ uint32 cluster_rank() {
    uint32 rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
    return rank;
}

// The shared::cluster address of the variable at `address` (shared::cta) in the cluster's CTA `rank`.
__device__ __forceinline__ uint32 map_to_cta(uint32 address, uint32 rank) {
    uint32 mapped;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(mapped) : "r"(address), "r"(rank));
    return mapped;
}

// An arrival on a barrier of another CTA of the cluster. Release at CTA scope (the default), as for
// a local arrival: a slot's consumers only read it, through wgmma that has retired; a cluster-scope
// release would also wait for this thread's outstanding global stores, on every slot handed back.
__device__ __forceinline__ void mbarrier_arrive_remote(uint32 cluster_address) {
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_address) : "memory");
}

// Every thread of every CTA in the cluster (exited threads aside) reaches this point.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// Orders this thread's generic-proxy shared accesses (cp.async, st.shared) with async-proxy ones (wgmma, TMA).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Barrier among `threads` threads (whole warps) under hardware barrier `id` (0 is __syncthreads).
__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// --- register reallocation ----------------------------------------------------------------------

template <int Registers>
__device__ __forceinline__ void release_registers() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Registers));
}
template <int Registers>
__device__ __forceinline__ void claim_registers() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Registers));
}

// --- wgmma bookkeeping ----------------------------------------------------------------------------

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

// Keeps the compiler from moving reads or writes of accumulators across wgmma_wait / wgmma_fence:
// the asynchronous wgmma writes them behind the compiler's back.
template <int Count>
__device__ __forceinline__ void fence_accumulators(float (&accumulators)[Count]) {
#pragma unroll
    for (int i = 0; i < Count; ++i) asm volatile("" : "+f"(accumulators[i])::"memory");
}

// Shared-memory matrix descriptor for the 128-byte swizzle (the layout TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B into a 1024-byte aligned tile). K-major tiles: rows of 64 elements,
// 8-row groups `stride_bytes` (1024) apart, leading offset unused. MN-major tiles: 64 MN-contiguous
// elements per 128-byte row, one row per k, 8-k groups `stride_bytes` (1024) apart and the next
// 64 MN elements `leading_bytes` apart.
__device__ __forceinline__ uint64 smem_descriptor(uint32 address, uint32 leading_bytes, uint32 stride_bytes) {
    return uint64((address & 0x3FFFF) >> 4) | (uint64((leading_bytes >> 4) & 0x3FFF) << 16) |
           (uint64((stride_bytes >> 4) & 0x3FFF) << 32) | (uint64(1) << 62);
}

// Byte offset of 16-byte chunk `chunk` of 128-byte row `row` in a 128-byte-swizzled tile: the
// same placement TMA uses, so gathered (cp.async) and TMA-loaded slices look alike to wgmma.
__device__ __forceinline__ uint32 swizzled_offset(int row, int chunk) {
    return uint32(row) * 128 + (uint32(chunk ^ (row & 7)) << 4);
}

}  // namespace moejit::sm90
