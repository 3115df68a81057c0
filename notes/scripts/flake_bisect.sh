#!/bin/bash
# Device probe (for the next stop): which of tests/test_cuda_kernels.py's tests set up the SpecInfer branch's
# flake (test_parallel_samples_reproducible_on_gpu[self:6] fails after the whole kernel file, never after none of it;
# notes/specinfer_flake_h200_stop39.log). Run after the first gpu_session.sh call, with the branch archived into the
# tree: git archive experiment/specinfer-device -o .spec.tar minispec kernels tests notes/scripts pyproject.toml
# (carry .spec.tar), then: bash notes/scripts/flake_bisect.sh PART PARTS  (runs the PART-th of PARTS slices of the
# kernel tests, in their order, then the engine file; prints whether the flaky test passed).
set -o pipefail
part=${1:-0}; parts=${2:-2}
cat /root/parts/gguf.part.aa .parts/b/gguf.part.ab > /root/smollm2.gguf || exit 1
mkdir -p /root/spec && tar -xf .spec.tar -C /root/spec && cd /root/spec || exit 1
export PYTHONPATH=/root/site:/root/spec MINISPEC_WEIGHTS=/root/weights PYTHONUNBUFFERED=1
timeout 120 python3 -m minispec.cli fetch --from /root/smollm2.gguf > /dev/null 2>&1 || { echo fetch failed; exit 1; }
python3 -m pytest -q --collect-only tests/test_cuda_kernels.py 2>/dev/null | grep "::" > /root/kernel_ids
total=$(wc -l < /root/kernel_ids); size=$(( (total + parts - 1) / parts ))
sed -n "$(( part * size + 1 )),$(( (part + 1) * size ))p" /root/kernel_ids > /root/slice_ids
echo "kernel tests $(( part * size + 1 ))-$(( (part + 1) * size )) of $total, then tests/test_cuda_engine.py"
# (test ids may hold spaces: passed from Python, not through the shell)
timeout 540 python3 -c "import sys, pytest; sys.exit(pytest.main(['-q', *open('/root/slice_ids').read().splitlines(), 'tests/test_cuda_engine.py']))" 2>&1 \
  | tail -4 | tee $OUT/flake_bisect_${part}_of_${parts}.log
