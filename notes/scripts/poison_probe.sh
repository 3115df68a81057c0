#!/bin/bash
# Device probe (stop 40): is the SpecInfer branch's flake (test_parallel_samples_reproducible_on_gpu[self:6] fails
# after the whole kernel file, notes/specinfer_flake_h200_stop39.log) a read of device memory nothing wrote? The
# engine file alone with every new allocation filled with 0xFF (poison_plugin.py), on the branch and on main; then
# the full kernel file and the engine file on the branch, as the failing run. Run after gpu_session.sh's first call,
# with .spec.tar carried (see flake_bisect.sh).
set -o pipefail
cat /root/parts/gguf.part.aa .parts/b/gguf.part.ab > /root/smollm2.gguf || exit 1
main=$PWD
mkdir -p /root/spec && tar -xf .spec.tar -C /root/spec || exit 1
export MINISPEC_WEIGHTS=/root/weights PYTHONUNBUFFERED=1
PYTHONPATH=/root/site:$main timeout 120 python3 -m minispec.cli fetch --from /root/smollm2.gguf > /dev/null 2>&1 || { echo fetch failed; exit 1; }
for tree in /root/spec $main; do
  echo "# $tree: tests/test_cuda_engine.py alone, allocations poisoned"
  (cd $tree && PYTHONPATH=/root/site:$tree:$main/notes/scripts timeout 200 python3 -m pytest -q -p poison_plugin tests/test_cuda_engine.py 2>&1 | tail -4)
done | tee $OUT/poison_probe.log
echo "# /root/spec: the kernel file then the engine file" | tee -a $OUT/poison_probe.log
(cd /root/spec && PYTHONPATH=/root/site:/root/spec timeout 300 python3 -m pytest -q tests/test_cuda_kernels.py tests/test_cuda_engine.py 2>&1 | grep -v "^\.\|^s" | tail -8) | tee -a $OUT/poison_probe.log
