"""The Llama forward over a step plan, written once for every backend.

Per layer: RMSNorm -> fused QKV GEMM -> RoPE + write K/V to slots -> paged tree
attention -> O GEMM -> (+ residual) RMSNorm -> fused gate/up GEMM -> SiLU*mul ->
down GEMM. Then the final norm and the LM head, only for the rows that need logits.
"""

from __future__ import annotations

import dataclasses

import math
from pathlib import Path

import numpy as np

from .checkpoint import ModelWeights, fuse_weights, read_checkpoint_tensors
from .config import ModelConfig, rope_inv_freq
from .kv_cache import KVCache
from .sampling import position_uniform
from .step import StepPlan


class Model:
    def __init__(self, config: ModelConfig, weights: ModelWeights, backend, num_layers: int | None = None):
        self.config = config
        self.weights = weights
        self.backend = backend
        self.num_layers = num_layers or config.num_layers  # fewer for a `self:K` early-exit drafter
        self.inv_freq = rope_inv_freq(config)  # [D/2] float64
        self.scale = 1.0 / math.sqrt(config.head_dim)

    @classmethod
    def load(cls, model_dir: Path, backend, config: ModelConfig | None = None) -> "Model":
        """The checkpoint in model_dir on `backend`; config: its config.json, where the caller has read it already."""
        config = config or ModelConfig.from_file(Path(model_dir) / "config.json")
        tensors = read_checkpoint_tensors(model_dir)
        backend.check_fits(config, tensors)  # fail before anything is half-loaded
        return cls(config, fuse_weights(config, tensors, backend.convert), backend)

    def truncated(self, num_layers: int) -> "Model":
        """The first `num_layers` layers with the same head and weights (no copy): early exit."""
        return Model(self.config, self.weights, self.backend, num_layers)

    def new_cache(self, num_pages: int, page_size: int) -> KVCache:
        c = self.config
        return KVCache(self.backend, self.num_layers, num_pages, c.num_kv_heads, page_size, c.head_dim)

    def forward(self, plan: StepPlan, cache: KVCache, tokens=None) -> "StepLogits":
        """Logits [R, V] of the plan's `logit_rows` (left on the device until asked for).

        Decode, tree-verify and short prefill steps replay a captured CUDA graph on the GPU backend
        (`can_replay`); everything else (and the NumPy backend) runs the layers one launch at a time.
        tokens: the step's input tokens as a backend array, in place of plan.tokens (the previous step's
        argmax, still on the device: see Engine.decode_ahead).
        """
        backend = self.backend
        if backend.can_replay(plan, self):
            return StepLogits(backend, *backend.replay(self, plan, cache, tokens))
        device_plan = backend.prepare_plan(plan)
        if tokens is not None:
            device_plan = dataclasses.replace(device_plan, tokens=tokens)
        return StepLogits(backend, self.compute(device_plan, cache))

    def compute(self, plan, cache: KVCache):
        """The layers over a backend plan -> logits [R, V] on the backend."""
        ops, w = self.backend, self.weights
        # CUDA on Hopper, a one-sequence decode step or tree step of up to 4 nodes: the embeddings, every layer and the
        # final norm in one launch (kernels/cluster_decode.cuh)
        h = ops.decode_in_one_launch(self, plan, cache)
        if h is None:
            h = self.final_hidden(plan, cache)
        if not plan.all_logits:
            h = h[plan.logit_rows]  # [R, hidden]
        return ops.logits(h, w.lm_head)  # [R, V]

    def final_hidden(self, plan, cache: KVCache):
        """The embedding, the layers and the final norm -> the LM head's input [N, hidden] on the backend."""
        ops, c, w = self.backend, self.config, self.weights
        H, Hkv, D = c.num_heads, c.num_kv_heads, c.head_dim
        x = ops.embedding(w.embed, plan.tokens)  # x: [N, hidden]
        eps = c.rms_norm_eps
        rows = ops.fused_rows(self, plan)
        if rows:  # CUDA, small decode or tree step: every layer in one persistent launch (kernels/fused_layers.cuh)
            x = ops.fused_layers(self, plan, cache, x, rows)  # the residual stream after the last layer
            return ops.add_rmsnorm(x, None, w.final_norm, eps)[0]
        h, residual = ops.add_rmsnorm(x, None, w.layers[0].attn_norm, eps)  # [N, hidden] normalised; the residual stream
        for i in range(self.num_layers):
            layer = w.layers[i]
            qkv = ops.linear(h, layer.wqkv)  # [N, (H + 2 Hkv) D]
            q = ops.rope_write_kv(qkv, plan, self.inv_freq, cache.k[i], cache.v[i], H, Hkv, D)  # [N, H, D]; K/V to slots
            o = ops.attention(q, cache.k[i], cache.v[i], plan, self.scale)  # [N, H D]
            # each product with the residual add and the RMSNorm behind it (on CUDA, split across it and the next
            # product: CudaBackend.linear_norm): the MLP's, then the next layer's, or the final one
            h, residual = ops.linear_norm(o, layer.wo, residual, layer.mlp_norm, eps)
            act = ops.gate_up_silu(h, layer.w_gate_up)  # [N, intermediate]
            if i + 1 < self.num_layers:
                h, residual = ops.linear_norm(act, layer.w_down, residual, w.layers[i + 1].attn_norm, eps)
        return ops.add_rmsnorm(ops.linear(act, layer.w_down), residual, w.final_norm, eps)[0]


class StepLogits:
    """A step's logits on the backend; the host gets argmax ids (greedy) or full rows only when asked."""

    def __init__(self, backend, logits, ids=None):
        self.backend, self.device = backend, logits
        self.ids = ids  # argmax ids [R] on the backend where the step computed them already (a replayed graph)
        self._host = self._argmax = self._argmax_read = self._draws = self._draws_read = self._draw_rows = None
        self._tests = self._tests_read = self._test_rows = None

    def row(self, r: int) -> "StepLogits":
        """Row r alone, copied: a replayed step's logits and ids are the graph's static buffers, which the next
        replay of that graph overwrites (the engine keeps a prompt's last row across the prefill's later steps)."""
        ids = None if self.ids is None else self.ids[r : r + 1].copy()
        return StepLogits(self.backend, self.device[r : r + 1].copy(), ids)

    def host(self) -> np.ndarray:  # float32 [R, V]
        if self._host is None:
            self._host = np.asarray(self.backend.to_host(self.device), dtype=np.float32)
        return self._host

    def top_logprobs(self, k: int, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable tokens of rows `rows` (default: all) and their log-probabilities, on the host
        ([len(rows), k] each)."""
        return self.backend.top_logprobs(self.device, k, rows)

    def argmax(self) -> np.ndarray:  # [R]
        if self._argmax is None:
            self._argmax = self._argmax_read() if self._argmax_read else self.backend.to_host(self.argmax_device())
        return self._argmax

    def fetch_argmax(self) -> None:
        """Queue the argmax ids' copy to the host behind the step now, for an argmax() to come: the copy's host calls
        run while the GPU works, and argmax() only waits (a greedy tree step's verification: ~15-20 µs less of
        host work between two tree steps, while the GPU idles)."""
        if self._argmax is None and self._argmax_read is None:
            self._argmax_read = self.backend.to_host_soon(self.argmax_device())

    def argmax_device(self):  # [R] int32 on the backend, not waited for
        return self.ids if self.ids is not None else self.backend.argmax_device(self.device)

    def sample_device(self, params, uniforms):  # [R] int32 on the backend: row r drawn with params[r] at u[r]
        return self.backend.sample_rows_device(self.device, list(range(len(params))), params, uniforms)

    def fetch_draws(self, rows: list[int], params: list, uniforms) -> None:
        """Draw a token from each of `rows` (row rows[i] with params[i] at uniforms[i]) in one launch and queue the
        copy to the host, for draws() to come (sampled verification; as fetch_argmax, the copy's host calls run
        while the GPU works)."""
        self._draw_rows = rows
        self._draws_read = self.backend.to_host_soon(self.backend.sample_rows_device(self.device, rows, params, uniforms))

    def draws(self) -> np.ndarray:
        """int32 [R]: fetch_draws' tokens at their rows, -1 elsewhere."""
        if self._draws is None:
            self._draws = self._at_rows(self._draw_rows, self._draws_read(), -1)
        return self._draws

    def _at_rows(self, rows: list[int], values, fill: int) -> np.ndarray:
        """int32 [R]: values at rows `rows`, `fill` elsewhere."""
        out = np.full(len(self.device), fill, dtype=np.int32)
        out[rows] = values
        return out

    def fetch_tests(self, rows: list[int], params: list, uniforms, q, q_rows: list[int], children: list[int], residual_uniforms) -> None:
        """SpecInfer's tests at chain nodes, rows `rows`, in one launch (backend.specinfer_rows, whose arguments these
        are), the copy to the host queued for tests() to come (sampled verification of chains drafted on the backend)."""
        self._test_rows = rows
        self._tests_read = self.backend.to_host_soon(
            self.backend.specinfer_rows(self.device, rows, params, uniforms, q, q_rows, children, residual_uniforms))

    def tests(self) -> np.ndarray:
        """int32 [R]: fetch_tests' outcomes at their rows (-1: the node's child accepted, else the token drawn there),
        -2 elsewhere."""
        if self._tests is None:
            self._tests = self._at_rows(self._test_rows, self._tests_read(), -2)
        return self._tests

    def choose(self, row: int, params, key: int, position: int) -> int:
        """One token from row `row`, a node at `position`: argmax, or drawn on the backend at u(key, position)."""
        if params.greedy:
            return int(self.argmax()[row])
        return int(self.backend.to_host(self.choose_device(row, params, key, position))[0])

    def choose_device(self, row: int, params, key: int, position: int):
        """choose's token left on the device ([1] int32, not waited for): the same argmax, or the same draw."""
        if params.greedy:
            return self.argmax_device()[row : row + 1]
        return self.backend.sample_rows_device(self.device, [row], [params], [position_uniform(key, position)])
