"""Compile every kernels/*.cu through NVRTC as the CUDA backend does (kernel_source's text, headers inlined, no
project include path), without a GPU: catches what nvcc's host headers hide from `.ci/run`'s nvcc pass, such as
INFINITY, which NVRTC does not define (stop 39's first top_share build failed on the device that way).

    python3 notes/scripts/nvrtc_check.py [LIBNVRTC] [CUDA_INCLUDE]

Defaults: the libnvrtc.so.13 and include directory of the `nvidia` pip packages (cupy-cuda13x's runtime), found
through the site-packages of this Python; libnvrtc-builtins must sit beside libnvrtc (LD_LIBRARY_PATH is set for
it by re-running this script when it is not).
"""
import ctypes
import os
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from minispec.backends.cuda_backend import KERNELS, kernel_source  # noqa: E402

packages = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
found = sorted(packages.glob("*/lib/libnvrtc.so.*"))
library = sys.argv[1] if len(sys.argv) > 1 else (str(found[0]) if found else "libnvrtc.so")
include = sys.argv[2] if len(sys.argv) > 2 else str(Path(library).parents[1] / "include")
lib_dir = str(Path(library).parent)
if lib_dir not in os.environ.get("LD_LIBRARY_PATH", "").split(":"):  # the builtins library is loaded by name
    os.environ["LD_LIBRARY_PATH"] = lib_dir + ":" + os.environ.get("LD_LIBRARY_PATH", "")
    os.execv(sys.executable, [sys.executable, *sys.argv])
nvrtc = ctypes.CDLL(library)
options = [b"--gpu-architecture=sm_90a", b"-std=c++17", f"-I{include}".encode()]
failed = 0
for path in sorted(KERNELS.glob("*.cu")):
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), kernel_source(path.name).encode(), path.name.encode(), 0, None, None) == 0
    result = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    text = log.value.decode(errors="replace").strip()
    status = "FAILED" if result != 0 else ("warnings" if text else "ok")
    failed += result != 0
    print(f"{path.name:28s} {status}" + (f"\n{text[:3000]}" if text else ""), flush=True)
print(f"nvrtc ({library}): {failed} of {len(list(KERNELS.glob('*.cu')))} failed")
sys.exit(1 if failed else 0)
