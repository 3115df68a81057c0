"""Device probe (stop 39): does a kernel launched with programmatic stream serialization wait for a host-to-device copy queued between it
and the kernel before it? slow (triggers at once, then spins) -> cp.asarray upload of n ints = it -> check (PDL)
counts elements != it. Stale reads would count."""
import sys
import numpy as np
import cupy as cp
sys.path.insert(0, ".")
from minispec.backends import driver

src = r'''
extern "C" __global__ void slow(float* x, long long spins) {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  long long t0 = clock64(); while (clock64() - t0 < spins) {}
  if (threadIdx.x == 0 && blockIdx.x == 0) x[0] += 1.0f;
}
extern "C" __global__ void check(const int* buf, int n, int expect, int* bad) {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  int count = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) count += buf[i] != expect;
  if (count) atomicAdd(bad, count);
}
'''
mod = cp.RawModule(code=src)
slow, check = mod.get_function("slow"), mod.get_function("check")
stream = cp.cuda.Stream(non_blocking=True)
stream.use()
x = cp.zeros(1, cp.float32)
for n in (64, 300_000):
    for pdl in (True, False):
        for spins in (0, 20_000, 200_000):
            bad = cp.zeros(1, cp.int32)
            hits = 0
            for it in range(200):
                if pdl:
                    driver.launch(slow, (132,), (128,), (x, np.int64(spins)), 0, stream.ptr)
                else:
                    slow((132,), (128,), (x, np.int64(spins)))
                buf = cp.asarray(np.full(n, it, dtype=np.int32))
                if pdl:
                    driver.launch(check, (64,), (256,), (buf, np.int32(n), np.int32(it), bad), 0, stream.ptr)
                else:
                    check((64,), (256,), (buf, np.int32(n), np.int32(it), bad))
                del buf
            stream.synchronize()
            print(f"n {n:7d} pdl {pdl!s:5} spins {spins:7d}: stale elements seen {int(bad.get()[0])} over 200 launches", flush=True)
