"""Offline check (nvcc and cuobjdump, no GPU): which kernel parameters each kernel reads before griddepcontrol.wait.
Compiles every kernels/*.cu as the backend does (sm_90a, bf16; the per-head-dim files at 64 and 128) and prints, for
each kernel with global loads above its first ACQBULK (the SASS of griddepcontrol.wait), those loads and the
parameter offsets (c[0x0][0x210] is the first parameter, 8 bytes a pointer) referenced before it. A load of what the
kernel ahead writes must not be among them: the compiler takes const __restrict__ loads (LDG.E.CONSTANT) for
invariant and may issue them above the wait's asm (kernels/pdl.cuh; stop 61 found add_rmsnorm's x there after its
residual loads had moved before the wait).

  python3 notes/scripts/pdl_audit.py [file.cu ...]"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, ".")
from minispec.backends.cuda_backend import KERNELS, PER_HEAD_DIM, kernel_source  # noqa: E402

files = sys.argv[1:] or sorted(f for f in os.listdir(KERNELS) if f.endswith(".cu"))
with tempfile.TemporaryDirectory() as tmp:
    for file in files:
        source = os.path.join(tmp, file)
        with open(source, "w") as f:
            f.write(kernel_source(file))
        for dim in (64, 128) if file in PER_HEAD_DIM else (None,):
            cubin = os.path.join(tmp, f"{file}.{dim}.cubin")
            subprocess.run(["nvcc", "-cubin", "-arch=sm_90a", "-std=c++17", "-DSTORAGE_BF16", "-o", cubin, source]
                           + ([f"-DHEAD_DIM={dim}"] if dim else []), check=True)
            sass = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True).stdout
            for function in re.split(r"\n\s+Function : ", sass)[1:]:
                name, _, code = function.partition("\n")
                if "ACQBULK" not in code:
                    continue
                before = code.split("ACQBULK")[0]
                loads = re.findall(r"LDG\.E[.\w]*", before)
                if loads:
                    params = sorted(set(int(p, 16) for p in re.findall(r"c\[0x0\]\[(0x[0-9a-f]+)\]", before) if int(p, 16) >= 0x210))
                    print(f"{file}{f' (D {dim})' if dim else ''} {name}: {len(loads)} loads before the wait "
                          f"({', '.join(sorted(set(loads)))}); parameter offsets {', '.join(hex(p) for p in params)}")
