"""The NumPy reference backend (float32): the oracle for every CUDA kernel.

Each function is written for clarity and follows the math in the header of
the matching `kernels/*.cu` file line by line.
"""

from __future__ import annotations

import numpy as np

from ..step import StepPlan


# ----------------------------------------------------------------------------- elementwise and norms


def embedding(table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return table[tokens].astype(np.float32)  # [N, hidden]


def add_rmsnorm(x: np.ndarray, residual: np.ndarray | None, weight: np.ndarray, eps: float):
    """residual <- x + residual;  y = residual / sqrt(mean(residual^2) + eps) * weight."""
    residual = x if residual is None else x + residual  # [N, hidden]
    variance = np.mean(residual * residual, axis=-1, keepdims=True)
    return (residual / np.sqrt(variance + eps)) * weight, residual


def linear(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """[M, K] x [N, K]^T -> [M, N], computed as (W x^T)^T: the same bits as x @ W^T from OpenBLAS, 1.2-1.9x faster at
    2-64 rows on the default model's weights (notes/cpu_linear_stop37.log), where x @ W^T packs the whole weight."""
    return (weight @ x.T).T


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    """gate_up: [N, 2I] (gate | up) -> silu(gate) * up: [N, I]."""
    gate, up = np.split(gate_up, 2, axis=-1)
    return gate / (1.0 + np.exp(-gate)) * up


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray):
    angle = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [N, D/2]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (i, i + D/2) of each head (the Hugging Face "rotate_half" layout). x: [N, heads, D]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def split_qkv_rope(qkv, positions, inv_freq, H, Hkv, D):
    """qkv: [N, (H + 2 Hkv) D] -> q [N, H, D], k [N, Hkv, D] rotated, v [N, Hkv, D]."""
    N = qkv.shape[0]
    q = qkv[:, : H * D].reshape(N, H, D)
    k = qkv[:, H * D : (H + Hkv) * D].reshape(N, Hkv, D)
    v = qkv[:, (H + Hkv) * D :].reshape(N, Hkv, D)
    cos, sin = rope_tables(inv_freq, positions)
    return rope(q, cos, sin), rope(k, cos, sin), v


# ----------------------------------------------------------------------------- paged KV


def write_kv(k_cache, v_cache, k, v, slots, page_size):
    """k_cache[slot // P, :, slot % P, :] = k[n] for every row n (slot < 0: skip)."""
    for n, slot in enumerate(slots):
        if slot >= 0:
            k_cache[slot // page_size, :, slot % page_size, :] = k[n]
            v_cache[slot // page_size, :, slot % page_size, :] = v[n]


def gather_kv(cache: np.ndarray, page_table: np.ndarray, length: int) -> np.ndarray:
    """Positions 0 .. length-1 of one sequence: [length, Hkv, D]."""
    P = cache.shape[2]
    s = np.arange(length)
    return cache[page_table[s // P], :, s % P, :]


def visibility(plan: StepPlan, b: int) -> np.ndarray:
    """Dense [T, kv_len] mask of sequence b: the prefix is visible, tree nodes through their ancestor bits."""
    T = plan.cu_q[b + 1] - plan.cu_q[b]
    L, length = plan.tree_start[b], plan.kv_len[b]
    if plan.causal[b]:  # query r sits at position length - T + r and sees keys up to it
        return np.arange(length)[None, :] <= (length - T + np.arange(T))[:, None]
    visible = np.zeros((T, length), dtype=bool)
    visible[:, :L] = True
    bits = np.uint64(1) << np.arange(length - L, dtype=np.uint64)  # tree node j at position L + j
    visible[:, L:] = (plan.masks[plan.cu_q[b] : plan.cu_q[b + 1], None] & bits[None, :]) != 0
    return visible


def attention(q, k_cache, v_cache, plan: StepPlan, scale: float) -> np.ndarray:
    """o_i = sum_j softmax_j(q_i . k_j * scale, visible_ij) v_j per query head (GQA: head h reads KV head h // G).

    q: [N, H, D], caches [NP, Hkv, P, D] -> o: [N, H * D]
    """
    N, H, D = q.shape
    Hkv = k_cache.shape[1]
    G = H // Hkv
    out = np.empty((N, H, D), dtype=np.float32)
    for b in range(plan.batch_size):
        rows = slice(plan.cu_q[b], plan.cu_q[b + 1])
        T = rows.stop - rows.start
        keys = gather_kv(k_cache, plan.page_tables[b], plan.kv_len[b]).transpose(1, 2, 0)  # [Hkv, D, S]
        values = gather_kv(v_cache, plan.page_tables[b], plan.kv_len[b]).transpose(1, 0, 2)  # [Hkv, S, D]
        # the G query heads of each KV head, all T rows: [Hkv, G T, D] (head h = kv G + g), one matrix product per KV head
        queries = q[rows].reshape(T, Hkv, G, D).transpose(1, 2, 0, 3).reshape(Hkv, G * T, D)
        scores = (queries @ keys * scale).reshape(Hkv, G, T, -1)  # [Hkv, G, T, S]
        scores = np.where(visibility(plan, b), scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=-1, keepdims=True)
        o = weights.reshape(Hkv, G * T, -1) @ values  # [Hkv, G T, D]
        out[rows] = o.reshape(Hkv, G, T, D).transpose(2, 0, 1, 3).reshape(T, H, D)
    return out.reshape(N, H * D)


class NumpyBackend:
    name = "cpu"

    def __init__(self):
        self.xp = np

    def describe(self) -> str:
        import platform
        import os

        return f"CPU (NumPy reference, {os.cpu_count()} cores, {platform.machine()})"

    def warm_up(self, config=None) -> None:
        """Nothing to compile (CudaBackend.warm_up compiles kernels ahead)."""

    def warm_up_trees(self, model, ngram: bool) -> None:
        """Nothing to compile (CudaBackend.warm_up_trees)."""

    def convert(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32)

    def empty_cache(self, shape):
        return np.empty(shape, dtype=np.float32)

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def to_host_soon(self, array, defer: bool = False):
        return lambda: np.asarray(array)  # nothing runs ahead of the host here

    def copy_page(self, ks, vs, source: int, destination: int) -> None:
        for cache in (*ks, *vs):
            cache[destination] = cache[source]

    def move_slots(self, ks, vs, source_slots, destination_slots) -> None:
        """cache[dst] = cache[src] for every pair, all reads before any write."""
        for cache in (*ks, *vs):
            P = cache.shape[2]
            rows = cache[source_slots // P, :, source_slots % P, :].copy()  # read all first
            cache[destination_slots // P, :, destination_slots % P, :] = rows

    # The model calls these through the backend so the CUDA backend can swap in kernels.
    embedding = staticmethod(embedding)
    add_rmsnorm = staticmethod(add_rmsnorm)
    linear = staticmethod(linear)
    silu_mul = staticmethod(silu_mul)

    @staticmethod
    def linear_norm(x, weight, residual, norm_weight, eps):
        """add_rmsnorm(linear(x, weight), ...) -> (h, the new residual) (the CUDA backend splits the norm across the
        products around it)."""
        return add_rmsnorm(linear(x, weight), residual, norm_weight, eps)

    @staticmethod
    def gate_up_silu(h, w_gate_up):
        """silu(h W_gate^T) * (h W_up^T) from the fused [2I, K] weight (the CUDA backend may do both in one kernel)."""
        return silu_mul(linear(h, w_gate_up))

    def rope_write_kv(self, qkv, plan: StepPlan, inv_freq, k_cache, v_cache, H, Hkv, D):
        q, k, v = split_qkv_rope(qkv, plan.positions, inv_freq, H, Hkv, D)
        write_kv(k_cache, v_cache, k, v, plan.slots, k_cache.shape[2])
        return q

    def argmax_device(self, logits) -> np.ndarray:
        return np.argmax(logits, axis=-1).astype(np.int32)

    def top_logprobs(self, logits, k: int, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reference of the top_share / top_merge kernels, on rows `rows` alone (default: all)."""
        from ..sampling import top_logprobs

        return top_logprobs(logits if rows is None else np.asarray(logits)[rows], k)

    def gather(self, array, index: list[int]):
        return np.asarray(array)[np.asarray(index, dtype=np.int64)]

    def concat(self, arrays):
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def sample_rows(self, logits, rows, params, uniforms) -> np.ndarray:
        """Reference of the sample_rows kernel: inverse CDF of p at u, in token order."""
        return self.draw_rows(logits, rows, params, uniforms)[0]

    def sample_rows_device(self, logits, rows, params, uniforms) -> np.ndarray:
        return self.sample_rows(logits, rows, params, uniforms)

    def draw_rows(self, logits, rows, params, uniforms) -> tuple[np.ndarray, np.ndarray]:
        """Reference of CudaBackend.draw_rows: sample_rows' draws (int32 [R]) and each row's p (float64 [R, V]),
        which they were drawn from."""
        from ..sampling import sample_from, target_distribution

        q = np.array([target_distribution(logits[r], p) for r, p in zip(rows, params)]) if len(rows) else np.zeros((0, np.shape(logits)[-1]))
        return np.array([sample_from(row, u) for row, u in zip(q, uniforms)], dtype=np.int32), q

    def specinfer_rows(self, logits, rows, params, uniforms, q, q_rows, children, residual_uniforms) -> np.ndarray:
        """Reference of CudaBackend.specinfer_rows: verify.verify_sampled's test at a chain's node (its one child
        drawn from q, normalised here), int32 [R]: -1 where accepted, else the residual's draw; p's draw where
        q_rows[r] < 0."""
        from ..sampling import sample_from, target_distribution

        tokens = []
        for row, settings, u, j, child, w in zip(rows, params, uniforms, q_rows, children, residual_uniforms):
            p = target_distribution(logits[row], settings)
            if j < 0:
                tokens.append(sample_from(p, u))
                continue
            q_node = q[j] / q[j].sum()
            tokens.append(-1 if u < min(1.0, p[child] / q_node[child]) else sample_from(np.maximum(p - q_node, 0.0), w))
        return np.array(tokens, dtype=np.int32)

    def attention(self, q, k_cache, v_cache, plan: StepPlan, scale: float):
        return attention(q, k_cache, v_cache, plan, scale)

    def logits(self, h, lm_head):
        return linear(h, lm_head)

    def prepare_plan(self, plan: StepPlan) -> StepPlan:
        return plan

    def can_replay(self, plan: StepPlan, model) -> bool:
        return False

    def fused_rows(self, model, plan: StepPlan) -> int:
        return 0  # the reference runs layer by layer

    def decode_in_one_launch(self, model, plan: StepPlan, cache):
        return None  # (the CUDA backend's one-launch decode step)

    # ------------------------------------------------------------------ n-gram speculation on the device
    def ngram_buffers(self, model, cache, N: int, W: int, capacity: int):
        from ..ngram_device import OUT_SIZE, STATE_SIZE, NgramBuffers
        from ..step import packed_offsets
        from ..tree import MAX_TREE_NODES

        return NgramBuffers(N, W, np.zeros(capacity, np.int32), np.zeros(STATE_SIZE, np.int32),
                            np.zeros((2, MAX_TREE_NODES), np.int32), np.zeros(packed_offsets(1, N, W)[-1], np.int32),
                            np.zeros((2, OUT_SIZE), np.int32))

    def ngram_load(self, buffers, tokens, state, tree, plan: StepPlan, owner=None) -> None:
        """The sequence's tokens, its state and tree rows (ngram_device.state_row, tree_rows), and its first plan
        (owner: the GPU's load keeps the tokens it converted for the same sequence; here every token is copied)."""
        from ..step import pack_plan

        buffers.hist[: len(tokens)] = tokens
        buffers.state[:] = state
        buffers.tree[:] = tree
        pack_plan(plan, buffers.packed, buffers.N, buffers.W)

    def ngram_table(self, buffers, table: list[int]) -> None:
        """The sequence's page table into the packed plan (pages added since)."""
        from ..step import packed_offsets

        o = packed_offsets(1, buffers.N, buffers.W)[9]
        buffers.packed[o : o + buffers.W] = -1
        buffers.packed[o : o + len(table)] = table

    def replay_packed(self, model, cache, buffers, max_kv_len: int):
        """The step whose plan is in buffers.packed -> (logits [n, V], argmax ids [n])."""
        from ..step import unpack_plan

        plan = unpack_plan(buffers.packed, buffers.N, buffers.W)
        if plan.num_tokens == 0:  # an empty plan (the sequence stopped at the step before): no work
            return np.zeros((0, model.config.vocab_size), np.float32), np.zeros(0, np.int32)
        logits = model.compute(plan, cache)
        return logits, self.argmax_device(logits)

    def ngram_draws(self, buffers, logits, key: int, params):
        """Each row's draw at its position in buffers.packed (u(key, position), sampling.position_uniforms): the
        sampled counterpart of replay_packed's argmax ids."""
        from ..sampling import position_uniforms
        from ..step import packed_offsets

        n, o = len(logits), packed_offsets(1, buffers.N, buffers.W)[2]
        return self.sample_rows_device(logits, range(n), [params] * n, position_uniforms(key, buffers.packed[o : o + n]))

    def ngram_advance(self, cache, buffers, ids, slot: int, params) -> None:
        """Reference of the ngram_advance kernel (kernels/ngram_step.cu), from the host drafter's own pieces."""
        from ..drafters import count_acceptance, gate_open, ngram_tree, scan_match_starts
        from ..ngram_device import OUT_TOKENS, state_row, tree_rows
        from ..step import StepItem, build_plan_one, empty_plan, pack_plan, packed_offsets
        from ..tree import Tree
        from ..verify import verify_chosen

        b, P = buffers, cache.page_size
        L, T, accepted, tries, tree_tokens, tree_steps = b.state[:6].tolist()
        if T == 0:  # stopped at an earlier step: nothing to verify, the plan stays empty
            b.out[slot, :2] = 0
            return
        tree = Tree(b.tree[0, :T].tolist(), b.tree[1, :T].tolist())
        path, bonus = verify_chosen(tree, np.asarray(ids)[:T])
        accepted, tries = count_acceptance(tree, path, accepted, tries)  # NgramDrafter.commit's counts
        if T > 1:
            tree_tokens, tree_steps = tree_tokens + len(path), tree_steps + 1
        o = packed_offsets(1, b.N, b.W)
        table = b.packed[o[9] : o[10]]
        cache.move_accepted(table, L, path)  # KVCache.commit's moves (its pages stay: the stretch holds them)
        taken = [tree.token_list[node] for node in path[1:]] + [int(bonus)]
        b.hist[L + 1 : L + 1 + len(taken)] = taken
        L += len(path)
        tokens = b.hist[: L + 1]
        stop, stop_len = params.stop_args()[:-1], params.stop_args()[-1]
        draft = None
        if L + 1 < stop_len and not any(token in stop for token in taken):  # not the end (Engine.take_tokens)
            alpha = accepted / tries
            found = scan_match_starts(tokens, params.max_ngram, params.max_matches, 1 if alpha >= 0.5 else 2, params.common)
            if not gate_open(tree_tokens, tree_steps, max(found.values(), default=0), params.pays, params.strong):
                found = {}  # NgramDrafter.pays
            continuations = [(tokens[start : start + params.depth].tolist(), weight) for start, weight in found.items()]
            draft = ngram_tree(int(tokens[L]), continuations, alpha, min(params.nodes, params.max_len - L), params.width)
        if draft is None or len(draft) == 1:  # the end, or no draft: an empty plan (no rows), no tree
            T = 0
            pack_plan(empty_plan(L, table), b.packed, b.N, b.W)
            b.tree[0], b.tree[1] = 0, -1
        else:
            T = len(draft)
            pack_plan(build_plan_one(StepItem.tree(table[table >= 0].tolist(), L, draft), P), b.packed, b.N, b.W)
            b.tree[:] = tree_rows(draft)
        b.state[:] = state_row(L, T, accepted, tries, tree_tokens, tree_steps)
        b.out[slot] = 0
        b.out[slot, :7] = [len(path), T, L, accepted, tries, tree_tokens, tree_steps]
        b.out[slot, OUT_TOKENS : OUT_TOKENS + len(taken)] = taken

    def ngram_read(self, buffers, slot: int) -> np.ndarray:
        return buffers.out[slot].copy()

    def default_kv_tokens(self, config, max_model_len: int) -> int:
        return 4 * max_model_len  # np.empty pages are only backed by memory once written

    def check_fits(self, config, tensors) -> None:
        pass  # host memory: let the OS say no
