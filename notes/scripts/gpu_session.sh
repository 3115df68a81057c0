#!/bin/bash
# Device probe: the second of the two calls that bring the default model over (see notes/README.md), then
# what is asked: "first-run", "tests", "e2e", "profile", "attention", "gemm", "spec", "sampling", "kernels", "sweep-short", "sweep",
# "op-times", "agreement", "spec-profile", "spec-profile-extract", "handover", "phases" (in the order given). Logs go to $OUT.
set -o pipefail
cat /root/parts/gguf.part.aa .parts/b/gguf.part.ab > /root/smollm2.gguf || exit 1
export PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights PYTHONUNBUFFERED=1
timeout 120 python3 -m minispec.cli fetch --from /root/smollm2.gguf > /dev/null 2>&1 || { echo fetch failed; exit 1; }
for what in "$@"; do
  case $what in
    tests) timeout 540 python3 -m pytest -q tests/test_cuda_kernels.py tests/test_cuda_engine.py tests/test_cuda_fused.py tests/test_ngram_device.py 2>&1 | tee $OUT/gpu_tests.log | tail -25 ;;
    first-run) # a fresh machine's first answers, CuPy's cache emptied before each build: .old's (git archive REV minispec
      # kernels), if there, then this tree's; plain, then with --draft ngram (its tree steps' kernels), then plain again.
      # Each line of output stamped with the seconds since the start; the last, the process's whole wall time.
      TIMEFORMAT="%R s"
      for dir in $([ -d .old ] && echo .old) .; do echo "## $dir" | tee -a $OUT/first_run.log; rm -rf ~/.cupy/kernel_cache
        for args in "" "--draft ngram" ""; do echo "== generate $args" | tee -a $OUT/first_run.log
          { time (cd $dir && PYTHONPATH=/root/site:$PWD timeout 120 python3 -m minispec.cli generate "What is the capital of France?" --device cuda $args 2>&1 \
            | python3 -u -c 'import sys, time; s = float(sys.argv[1]); [print(f"[{time.time() - s:4.1f} s] {l}", end="") for l in sys.stdin]' $EPOCHREALTIME); } 2>&1 | tee -a $OUT/first_run.log
        done; done ;;
    phases) # a first run's stamps (notes/scripts/first_run_phases.py): CuPy's cache emptied, then again cached
      rm -rf ~/.cupy/kernel_cache
      for run in first cached; do echo "## $run" | tee -a $OUT/first_run_phases.log
        timeout 120 python3 notes/scripts/first_run_phases.py 2>&1 | tee -a $OUT/first_run_phases.log; done ;;
    e2e) timeout 300 python3 -m minispec.cli bench e2e 2>&1 | grep -v "it/s\]" | tee $OUT/bench_e2e.log ;;
    e2e-quick) timeout 200 python3 -m minispec.cli bench e2e --quick 2>&1 | grep -v "it/s\]" | tee $OUT/bench_e2e_quick.log ;;
    attention) timeout 300 python3 -m minispec.cli bench attention 2>&1 | tee $OUT/bench_attention.log ;;
    gemm) timeout 300 python3 -m minispec.cli bench gemm --quick 2>&1 | tee $OUT/bench_gemm.log ;;
    sampling) timeout 200 python3 notes/scripts/sampling_probe.py 2>&1 | tee $OUT/sampling_probe.log ;;
    sweep-short) timeout 200 python3 notes/scripts/attention_sweep.py short 2>&1 | tee $OUT/attention_sweep_short.log ;;
    sweep) timeout 300 python3 notes/scripts/attention_sweep.py 2>&1 | tee $OUT/attention_sweep.log ;;
    op-times) timeout 300 python3 notes/scripts/op_times.py 64 32 16 2>&1 | tee $OUT/op_times.log ;;
    sampled) timeout 200 python3 notes/scripts/sampled_decode.py 2>&1 | grep -v "it/s\]" | tee $OUT/sampled_decode.log
        if [ -d .old ]; then echo "# the same with .old (an older build: git archive REV minispec kernels)" | tee -a $OUT/sampled_decode.log
          (cd .old && timeout 200 python3 ../notes/scripts/sampled_decode.py 2>&1 | grep -v "it/s\]" | tee -a $OUT/sampled_decode.log); fi ;;
    spec-profile) timeout 200 python3 notes/scripts/spec_host_profile.py 2>&1 | grep -v "it/s\]" | tee $OUT/spec_host_profile.log ;;
    spec-profile-extract) timeout 200 python3 notes/scripts/spec_host_profile.py extract 2>&1 | grep -v "it/s\]" | tee $OUT/spec_host_profile_extract.log ;;
    agreement) timeout 200 python3 notes/scripts/spec_agreement.py 2>&1 | grep -v "it/s\]" | tee $OUT/spec_agreement.log ;;
    kernels) timeout 200 python3 -m pytest -q -x tests/test_cuda_kernels.py 2>&1 | tail -15 ;;
    device-draft) timeout 200 python3 -m pytest -q tests/test_ngram_device.py 2>&1 | tail -15
        timeout 300 python3 notes/scripts/device_draft_ab.py 6 2>&1 | grep -v "it/s\]" | tee $OUT/device_draft_ab.log ;;
    spec) timeout 300 python3 -m minispec.cli bench spec --device cuda 2>&1 | tee $OUT/bench_spec.log ;;
    handover) timeout 200 python3 notes/scripts/handover_probe.py 2>&1 | grep -v "it/s\]" | tee $OUT/handover.log ;;
    profile) for T in 64 1; do
        timeout 200 ncu --clock-control none --nvtx --nvtx-include "step/" --metrics gpu__time_duration.sum --csv \
          python3 notes/scripts/layer_profile.py $T 3 > $OUT/profile_T$T.csv 2> $OUT/profile_T$T.err
        tail -3 $OUT/profile_T$T.err; done ;;
  esac
done
