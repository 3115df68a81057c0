"""CPU tool: whether a kernel refactor changed any kernel's machine code. Compiles kernels/ files (as kernel_source
inlines them) for sm_90a with nvcc, or takes cubins, and compares every entry point's SASS between an old and a new
build, addresses and column padding left out. Stop 49 split gemm.cu and attention.cu into a file per kernel family
with it: all 100 kernels the same.

    python3 notes/scripts/sass_compare.py OLD.cubin NEW.cubin [NEW2.cubin ...]
    python3 notes/scripts/sass_compare.py --build OUT.cubin FILE.cu [-DNAME=VALUE ...]
        (kernels/FILE.cu of the work tree, bf16 storage; e.g. -DHEAD_DIM=64 for one head dim's instances, as the
        backend builds a file that includes kernels/head_dim.cuh)

cuobjdump comes with the CUDA toolkit, or without one from pip: `pip download --no-deps nvidia-cuda-cuobjdump`, unzip
the wheel, and point CUOBJDUMP at nvidia/cu13/bin/cuobjdump (the default is `cuobjdump` on PATH). To compare with an
older commit, `git stash` or `git worktree add` it and build there."""
import difflib
import os
import re
import subprocess
import sys
import tempfile

CUOBJDUMP = os.environ.get("CUOBJDUMP", "cuobjdump")


def build(out: str, file: str, *options: str) -> None:
    sys.path.insert(0, ".")
    from minispec.backends.cuda_backend import kernel_source

    with tempfile.NamedTemporaryFile("w", suffix=".cu", delete=False) as source:
        source.write(kernel_source(file))
    subprocess.run(["nvcc", "-cubin", "-arch=sm_90a", "-std=c++17", "-DSTORAGE_BF16", *options, source.name, "-o", out], check=True)


def kernels(cubin: str) -> dict[str, list[str]]:
    """Each entry point's SASS lines, whitespace collapsed and the /*address*/ column dropped."""
    text = subprocess.run([CUOBJDUMP, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    found = {}
    for part in re.split(r"\n\s+Function : ", text)[1:]:
        name, body = part.split("\n", 1)
        body = re.sub(r"/\*[0-9a-f]{4,}\*/", "", body)
        found[name.strip()] = [" ".join(line.split()) for line in body.split("\n") if line.strip()]
    return found


if __name__ == "__main__":
    if sys.argv[1] == "--build":
        build(*sys.argv[2:])
        sys.exit(0)
    old, new = kernels(sys.argv[1]), {}
    for cubin in sys.argv[2:]:
        new.update({name: (cubin, sass) for name, sass in kernels(cubin).items()})
    same = 0
    for name in sorted(old):
        if name not in new:
            print(f"{name}: missing from the new build")
        elif new[name][1] == old[name]:
            same += 1
        else:
            changed = [line for line in difflib.unified_diff(old[name], new[name][1], lineterm="", n=0)
                       if line[:1] in "+-" and line[:3] not in ("---", "+++")]
            print(f"{name} ({new[name][0]}): {len(changed)} SASS lines differ")
    print(f"{same} of {len(old)} kernels the same; only in the new build: {sorted(set(new) - set(old))}")
