"""kernel_source: the text NVRTC compiles has every kernels/ header inlined, headers that include headers too,
each header once (CPU: no GPU needed)."""

import re

from minispec.backends.cuda_backend import KERNELS, kernel_source


def test_every_kernel_file_gets_its_headers_inlined_once():
    headers = {path.name: path.read_text() for path in KERNELS.glob("*.cuh")}
    for path in KERNELS.glob("*.cu"):
        source = kernel_source(path.name)
        assert '#include "' not in source, path.name  # NVRTC gets no include path
        wanted, todo = set(), re.findall(r'#include "(\w+\.cuh)"', path.read_text())
        while todo:  # the headers it includes, directly or through another header
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo += re.findall(r'#include "(\w+\.cuh)"', headers[name])
        for name in headers:
            # a header's first definition line that it has once shows up once if included, never otherwise
            starts = ("__device__", "typedef", "struct", "template", "#define")
            lines = headers[name].splitlines()
            first = next(line for line in lines if line.startswith(starts) and lines.count(line) == 1)
            assert source.count(first) == (1 if name in wanted else 0), (path.name, name)
    # the fused-layers instances take the kernel header and, through it, the sm_80 helpers
    assert "fused_layers_body" in kernel_source("fused_layers_r1.cu")
    assert kernel_source("fused_layers_r4.cu").count("void mma16816(") == 1


def test_per_head_dim_files_wrap_every_instance_in_its_dim():
    """A file the backend compiles for one head dim (-DHEAD_DIM, kernels/head_dim.cuh) wraps each of its instance
    lines in the wrapper of the dim that instance is built for: an instance left out of a wrapper would be built for
    every model, and one in the wrong wrapper would be missing where it is launched (a GPU-only failure)."""
    from minispec.backends.cuda_backend import HEAD_DIMS, PER_HEAD_DIM

    for name in PER_HEAD_DIM:
        lines = [line for line in (KERNELS / name).read_text().splitlines() if re.match(r"[A-Z_0-9]+\(", line)]
        assert lines, name
        for line in lines:
            wrapped = re.fullmatch(r"HEAD_DIM_(\d+)\(([A-Z_]+)\((.*)\)\)\s*(//.*)?", line)
            assert wrapped and int(wrapped.group(1)) in HEAD_DIMS, (name, line)
            assert wrapped.group(1) in re.split(r",\s*", wrapped.group(3)), (name, line)  # the instance's own D argument
