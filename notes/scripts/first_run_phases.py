"""Device probe: where a machine's first `minispec generate` spends its time. It runs the CLI's generate in this
process with stamps (seconds since the start, and the thread) at: the imports; each kernel file's compile on its
thread (start, end: CudaBackend.compile_module); each wait of kernel() for a file not yet loaded (the compile it
waited for, or a cached module's load); each graph capture (CudaBackend.capture); the first text piece; the answer's
end; the process's end (after finish_compiles). Stop 64's first runs answered at 6.5 s, ~2.2 s after their last
named compile wait, where a cached run takes 2.0-2.3 s in all (notes/first_run_compile_h200_stop64.log): this names
that time.

    rm -rf ~/.cupy/kernel_cache   # a first run (leave the cache for a cached one)
    PYTHONPATH=/root/site:$PWD MINISPEC_WEIGHTS=/root/weights python3 notes/scripts/first_run_phases.py [generate's options]

(default: "What is the capital of France?" --device cuda; options given replace the device, e.g. --device cuda
--draft ngram)."""
import sys
import threading
import time

T0 = time.perf_counter()
stamps = []
lock = threading.Lock()


def stamp(what: str) -> None:
    with lock:
        stamps.append((time.perf_counter() - T0, threading.current_thread().name, what))


sys.path.insert(0, ".")
from minispec import cli, llm  # noqa: E402
from minispec.backends.cuda_backend import CudaBackend  # noqa: E402

stamp("imports done")
compile_module, kernel, capture, stream_events = CudaBackend.compile_module, CudaBackend.kernel, CudaBackend.capture, llm.LLM.stream_events


def timed_compile(self, file, head_dim=None):
    stamp(f"compile {file} {head_dim or ''} starts")
    module = compile_module(self, file, head_dim)
    stamp(f"compile {file} {head_dim or ''} ends")
    return module


def timed_kernel(self, file, name, head_dim=None):
    if (file, head_dim) in self.modules:
        return kernel(self, file, name, head_dim)
    start = time.perf_counter()
    function = kernel(self, file, name, head_dim)
    stamp(f"kernel() waited {time.perf_counter() - start:.3f} s for {file} {head_dim or ''} ({name})")
    return function


def timed_capture(self, step, model, cache):
    start = time.perf_counter()
    capture(self, step, model, cache)
    stamp(f"graph captured in {time.perf_counter() - start:.3f} s (B = {step.B}, {step.N} rows a bucket)")


def timed_stream(self, prompt, params=None):
    first = True
    for piece, seq in stream_events(self, prompt, params):
        if first:
            stamp("first text piece")
            first = False
        yield piece, seq
    stamp("answer ends")


CudaBackend.compile_module, CudaBackend.kernel, CudaBackend.capture = timed_compile, timed_kernel, timed_capture
llm.LLM.stream_events = timed_stream
options = sys.argv[1:] or ["--device", "cuda"]
try:
    cli.main(["generate", "What is the capital of France?", *options])
finally:
    stamp("generate returned (after finish_compiles)")
    print(f"\n# first_run_phases: {' '.join(options)}; s since the start, thread")
    for at, thread, what in sorted(stamps):
        print(f"{at:7.3f}  {thread[:22]:22s}  {what}")
