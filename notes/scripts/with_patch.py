"""Run a probe script with module constants of minispec set first, for A/Bs of a rule's constant by turns without a
second build:

    PATCH=minispec.backends.cuda_fused.FUSED_BLOCK_SPLITS=16 PYTHONPATH=$PWD python3 notes/scripts/with_patch.py \
        notes/scripts/graph_ab.py b16 smol

PATCH holds `module.NAME=value` items separated by spaces; each value is a Python literal. The script then runs as
__main__ with the arguments after its path. Only constants read when a rule runs (not copied at import) take effect."""
import ast
import importlib
import os
import runpy
import sys

for item in os.environ.get("PATCH", "").split():
    target, value = item.split("=", 1)
    module, name = target.rsplit(".", 1)
    mod = importlib.import_module(module)
    if not hasattr(mod, name):
        raise SystemExit(f"with_patch: {module} has no {name}")
    setattr(mod, name, ast.literal_eval(value))
    print(f"# with_patch: {target} = {value}", flush=True)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
