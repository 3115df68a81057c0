"""Device probe: does a line in the L1 survive the grid barrier's acquire poll? One warp times one load (clock64 cycles)
after a prefetch.global.L1 or an ld.global.nc of its line, a 20k-cycle spin, and optionally an ld.acquire.gpu /
fence.acq_rel.gpu (what kernels/fused_layers.cuh grid_wait does). Run from the repository root: python3 notes/scripts/l1_probe.py
(output: notes/barrier_probe_stop15.log)"""
import cupy as cp
import numpy as np

SRC = r"""
__device__ __forceinline__ long long now() { long long t; asm volatile("mov.u64 %0, %%clock64;" : "=l"(t) :: "memory"); return t; }
// mode: 0 no prefetch; 1 prefetch.L1 then spin; 2 prefetch.L1, ld.acquire.gpu, spin; 3 ld.global.nc (allocating) then spin;
// 4 as 3 then ld.acquire; 5 as 1 then fence.acq_rel.gpu; 6 as 3 then ld.relaxed + fence.acq_rel.gpu; 7 as 1, then red.release + ld.acquire
extern "C" __global__ void probe(const unsigned* data, unsigned* flag, int mode, long long* out) {
    int lane = threadIdx.x;
    const unsigned* line = data + lane * 32 * 4;  // lane's own 512-byte span, first line
    unsigned sink = 0;
    if (mode == 1 || mode == 2 || mode == 5 || mode == 7) asm volatile("prefetch.global.L1 [%0];" :: "l"(line));
    if (mode == 3 || mode == 4 || mode == 6) { unsigned v; asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(line)); sink += v; }
    long long t0 = now(); while (now() - t0 < 20000) {}
    if (mode == 2 || mode == 4) { unsigned v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory"); sink += v; }
    if (mode == 5) asm volatile("fence.acq_rel.gpu;" ::: "memory");
    if (mode == 6) { unsigned v; asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory"); sink += v; asm volatile("fence.acq_rel.gpu;" ::: "memory"); }
    if (mode == 7) { asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(flag) : "memory"); unsigned v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory"); sink += v; }
    __syncwarp();
    long long a = now();
    unsigned v; asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(line + (sink & 0x10000))); 
    sink += v;
    asm volatile("add.u32 %0, %0, 1;" : "+r"(sink));
    long long b = now();
    out[lane] = b - a + (sink == 12345 ? 1 : 0);
}
"""
m = cp.RawModule(code=SRC, options=("-arch=sm_90a",))
f = m.get_function("probe")
names = ["no prefetch", "prefetch.L1", "prefetch.L1 + ld.acquire", "ld.nc", "ld.nc + ld.acquire", "prefetch.L1 + fence.acq_rel", "ld.nc + relaxed+fence", "prefetch.L1 + red.release + ld.acquire"]
for mode in range(8):
    res = []
    for rep in range(5):
        data = cp.arange(1 << 22, dtype=cp.uint32) * 0  # fresh buffer: cold in L1
        flag = cp.zeros(1, dtype=cp.uint32)
        out = cp.zeros(32, dtype=cp.int64)
        f((1,), (32,), (data, flag, np.int32(mode), out))
        res.append(int(cp.median(out)))
    print(f"{names[mode]:40s} cycles for the load after: {sorted(res)}")
