"""N-gram speculation without a model: greedy verification accepts exactly the drafted path that follows the
target's greedy continuation, so once that continuation is known (one plain run per prompt) any drafter policy
can be replayed on the host and priced with measured step costs.

python3 notes/scripts/ngram_offline.py outputs   # greedy outputs of the prompts, default model, NumPy backend
python3 notes/scripts/ngram_offline.py           # replay: plain vs n-gram tree, with and without the one-ahead stretches
python3 notes/scripts/ngram_offline.py oracle    # the bound of a drafter that knows which span the output copies next
python3 notes/scripts/ngram_offline.py device    # the gate's settings at the device-drafted loop's costs (since stop 34)
python3 notes/scripts/ngram_offline.py reopen    # a closed gate that strong matches can reopen, against the rule (stop 43)
python3 notes/scripts/ngram_offline.py sizes     # a tree budget chosen step by step from the drafted nodes' values (stop 59)
python3 notes/scripts/ngram_offline.py lengths   # the drafter's longest suffix match (4, the engine's, to 12) and strong match (stop 66)

Costs (ms): the default model's graph steps on an H100 (notes/bench_e2e_h100_stop18.log: plain decode one step
ahead 0.632, with the host in the loop 0.639, trees of <= 4 / 16 / 32 / 64 nodes 0.793 / 0.881 / 1.168 / 1.160)
plus HOST ms of host work a step that is not decoded ahead (draft, plan, verify; not hidden behind the GPU: ~0.2 on
stop 18's code, notes/spec_step_probe_h100_stop18.log). Until stop 18 the costs were stop 13's (0.667, 0.696, 0.858 /
1.028 / 1.280 / 1.311, HOST 0.15). The drafter is the engine's default (drafters.NGRAM_BUDGET).
Since stop 24: plain one ahead 0.568 (1760 tokens/s), trees 0.80 / 0.85 / 1.05 / 1.08 (stop 23's kernels at short
contexts), and HOST 0.6, the value at which the replay gives bench e2e's measured ratios (summarise 0.93x, rewrite
2.27x, extract 2.69x against 0.94-0.96x, 2.38-2.43x, 2.51-2.53x on the H100): with HOST 0.2 it had summarise at 1.13x
where the engine measured 0.95x. A tree step costs more than its GPU time and plan: the stretch of decoding ahead it
breaks drains and restarts (notes/ngram_gate_stop24.log).
"""

import json
import sys
from pathlib import Path

from minispec.bench import LONG_PROMPTS, SPEC_PROMPTS
from minispec.drafters import NGRAM_BUDGET, NgramDrafter
from minispec.sampling import SamplingParams

OUTPUTS = Path(__file__).parent.parent / "ngram_outputs.json"
MORE_PROMPTS = {
    "fix_code": "Fix the bug in this Python function and show the corrected function: def total(items):\n    s = 0\n    for i in range(len(items) + 1):\n        s += items[i]\n    return s",
    "list": "Turn this sentence into a bulleted list of the fruits it names: We bought apples, bananas, cherries, dates and figs at the market on Saturday morning.",
    "qa_doc": "Read the text and answer: what colour is the door of the blue house? Text: The blue house on Elm Street has a green door. The red house next to it has a yellow door. The blue house was built in 1920.",
    "email": "Write a short polite email to my manager asking to move our meeting from Tuesday to Wednesday.",
    "explain": "Explain in simple words why the sky is blue.",
    "json": "Convert this to JSON with keys name and age: Tom is 31 years old. Anna is 27 years old. Lee is 45 years old.",
    "shorten": "Make this sentence shorter without changing its meaning: The meeting that was planned for the afternoon of Friday has been moved to the morning of Monday because the room was not free.",
    "recipe": "List the steps to make a cup of tea.",
}
AHEAD, ONE, TREE = 0.568, 0.62, {4: 0.80, 16: 0.85, 32: 1.05, 64: 1.08}
HOST = 0.6


def outputs():
    from minispec import LLM, SamplingParams

    llm = LLM(device="cpu")
    data = {}
    for name, text in {**SPEC_PROMPTS, **MORE_PROMPTS, **LONG_PROMPTS}.items():
        ids = llm.chat_prompt([{"role": "user", "content": text}])
        data[name] = {"prompt": ids, "output": llm.generate(ids, SamplingParams(temperature=0, max_tokens=128)).token_ids}
    OUTPUTS.write_text(json.dumps(data))


class Seq:
    def __init__(self, tokens, params=SamplingParams(temperature=0)):
        self.tokens = list(tokens)
        self.params = params


def decode_until_drafts(drafter, seq, truth, k: int) -> int:
    """decode_ahead: plain steps one ahead from truth[k] until the drafter has drafts; the drafts are seen after the
    host reads a token, when the next step is already in flight, so one more token comes at the plain step's cost
    before the tree (until stop 16 the replay left it out and over-predicted the stretches: 1.16x where it now says
    1.14x). Returns the next k."""
    while k < len(truth):
        seq.tokens.append(truth[k])
        k += 1
        if k < len(truth) and len(drafter.propose([seq], [1 << 20])[0]) > 1:
            seq.tokens.append(truth[k])
            return k + 1
    return k


def accepted_path(tree, truth, k: int) -> list[int]:
    """The nodes greedy verification of `tree` accepts where the output continues at truth[k]: the root, then the
    drafted path that follows the truth."""
    node, path = 0, [0]
    while k + len(path) - 1 < len(truth):
        child = next((c for c in tree.children(node) if tree.tokens[c] == truth[k + len(path) - 1]), None)
        if child is None:
            break
        node = child
        path.append(child)
    return path


def verify_and_commit(drafter, seq, tree, truth, k: int) -> int:
    """Greedy verification of `tree` where the output continues at truth[k]: the drafted path that follows the
    truth, then the bonus token, committed. Returns the next k."""
    path = accepted_path(tree, truth, k)
    accepted = truth[k : k + len(path)]  # the drafts on the path, then the bonus token
    drafter.commit(seq, path, accepted)
    seq.tokens += accepted
    return k + len(accepted)


def replay(drafter, prompt, truth, stretches):
    """ms of n-gram speculation over `truth` (the greedy output, then the stop token)."""
    seq, k, ms = Seq(prompt + truth[:1]), 1, 0.0  # the prefill chose the first token
    while k < len(truth):
        tree = drafter.propose([seq], [1 << 20])[0]
        if stretches and len(tree) == 1:  # a token at the plain step's cost until drafts come
            after = decode_until_drafts(drafter, seq, truth, k)
            k, ms = after, ms + (after - k) * AHEAD
            continue
        k = verify_and_commit(drafter, seq, tree, truth, k)
        ms += HOST + (TREE[next(b for b in sorted(TREE) if b >= len(tree))] if len(tree) > 1 else ONE)
    drafter.release(seq)
    return ms


def main():
    data, eos = json.loads(OUTPUTS.read_text()), 2
    print(f"{'prompt':<10} {'tokens':>6} {'plain ms':>8}  n-gram x plain: step by step, with stretches")
    totals = [0.0, 0.0, 0.0]
    for name, d in data.items():
        truth = d["output"] + [eos]
        plain = (len(truth) - 1) * AHEAD
        runs = [replay(NgramDrafter(NGRAM_BUDGET), d["prompt"], truth, s) for s in (False, True)]
        totals = [a + b for a, b in zip(totals, [plain] + runs)]
        print(f"{name:<10} {len(truth) - 1:>6} {plain:>8.1f}  {plain / runs[0]:.2f}x {plain / runs[1]:.2f}x")
    print(f"{'all':<10} {'':>6} {totals[0]:>8.1f}  {totals[0] / totals[1]:.2f}x {totals[0] / totals[2]:.2f}x")


def compare(other):
    """Each stored prompt's ratio to plain decoding for the engine's n-gram schedule (replay, with stretches) and for
    `other(prompt, truth) -> (ms, note)`, at this module's costs (a script may set them first)."""
    data, totals = json.loads(OUTPUTS.read_text()), [0.0, 0.0, 0.0]
    for name, d in data.items():
        truth = d["output"] + [2]
        plain = (len(truth) - 1) * AHEAD
        engine = replay(NgramDrafter(NGRAM_BUDGET), d["prompt"], truth, True)
        ms, note = other(d["prompt"], truth)
        totals = [a + b for a, b in zip(totals, [plain, engine, ms])]
        print(f"{name:<10} {plain / engine:.2f}x -> {plain / ms:.2f}x  {note}")
    print(f"{'all':<10} {totals[0] / totals[1]:.2f}x -> {totals[0] / totals[2]:.2f}x")


def longest_copy(context, rest):
    """The longest prefix of `rest` found anywhere in `context` (as a span)."""
    best = 0
    for i in range(len(context)):
        n = 0
        while n < len(rest) and i + n < len(context) and context[i + n] == rest[n]:
            n += 1
        best = max(best, n)
    return best


def oracle():
    """A bound for any drafter that copies: each step drafts exactly the longest span of prompt + output so far
    that the greedy output continues with (knowing it, whether or not a suffix match points there), priced as a
    16-node tree step plus HOST; where nothing copies, a plain step one ahead."""
    data, eos = json.loads(OUTPUTS.read_text()), 2
    for name, d in data.items():
        truth = d["output"] + [eos]
        k, ms = 1, 0.0
        while k < len(truth):
            n = longest_copy(d["prompt"] + truth[:k], truth[k:])
            ms += TREE[16] + HOST if n else AHEAD
            k += n + 1
        print(f"{name:<10} copying oracle {(len(truth) - 1) * AHEAD / ms:.2f}x plain")


# Since stop 33 a greedy sequence's tree steps are drafted on the device, back to back (Engine.speculate_on_device):
# a tree step costs DEVICE_TREE, each stretch of them STRETCH ms of idle GPU at its start and at its end, a plain step
# one ahead DEVICE_AHEAD, and a generation DEVICE_FIXED more (the prefill, the first token), in both the plain and
# the speculative runs. Fitted to stop 34's `bench e2e --quick` on a slow host (summarise 0.87x, rewrite 1.81x,
# extract 2.09x measured; 0.87 / 1.78 / 2.01x replayed at (0.3, 0.34)); a fast host's (0.94 / 1.95 / 2.18x) sits
# near (0.15, 0.17).
DEVICE_AHEAD, DEVICE_TREE, DEVICE_FIXED = 0.295, 0.69, 1.7
STRETCH = {"slow": (0.3, 0.34), "fast": (0.15, 0.17)}


def replay_device(drafter, prompt, truth, start: float, end: float, ahead: float = DEVICE_AHEAD, tree_ms=None) -> float:
    """ms of n-gram speculation over `truth` as the device drafts it: plain steps one ahead (`ahead` ms) until the
    drafter has drafts, then tree steps (tree_ms(nodes), default DEVICE_TREE) until a tree is the root alone."""
    tree_ms = tree_ms or (lambda nodes: DEVICE_TREE)
    seq, k, ms, stretch = Seq(prompt + truth[:1]), 1, DEVICE_FIXED, False
    while k < len(truth):
        tree = drafter.propose([seq], [1 << 20])[0]
        if len(tree) == 1:
            after = decode_until_drafts(drafter, seq, truth, k)
            k, ms, stretch = after, ms + (end if stretch else 0.0) + (after - k) * ahead, False
            continue
        size = len(tree)
        k = verify_and_commit(drafter, seq, tree, truth, k)
        ms, stretch = ms + (0.0 if stretch else start) + tree_ms(size), True
    drafter.release(seq)
    return ms


def device():
    """The gate's settings (NgramDrafter's pays, strong) replayed at the device's costs, slow and fast host: each
    stored prompt's ratio to plain decoding."""
    data = json.loads(OUTPUTS.read_text())
    gates = [(3.0, 8), (4.0, 8), (4.5, 8), (5.0, 8), (3.0, 9), (4.5, 9), (3.0, 10), (4.0, 10), (4.5, 10), (5.0, 10), (6.0, 10), (4.5, 99)]
    for host, (start, end) in STRETCH.items():
        print(f"{host} host: stretch start {start} ms, end {end} ms; n-gram x plain per prompt (strong 99: never)")
        for pays, strong in gates:
            totals, cells = [0.0, 0.0], []
            for name, d in data.items():
                truth = d["output"] + [2]
                plain = DEVICE_FIXED + (len(truth) - 1) * DEVICE_AHEAD
                ms = replay_device(NgramDrafter(NGRAM_BUDGET, pays=pays, strong=strong), d["prompt"], truth, start, end)
                totals = [totals[0] + plain, totals[1] + ms]
                cells.append(f"{name} {plain / ms:.2f}")
            print(f"  pays {pays} strong {strong:>2}: all {totals[0] / totals[1]:.3f}  " + " ".join(cells))


def reopen():
    """The gate as the drafter has it, against one that weighs a start as if one-token matches counted (+1 while
    the drafts are accepted less than half the time, when they are not looked up): with the rule a start weighs at
    most 4 + 3 + 2 = 9 < NGRAM_STRONG then, so a gate that closed with alpha < 1/2 never opens again. Also the
    reopening gate at strong 12. Replayed at the device's costs on the stored prompts (a file of other outputs,
    the same JSON layout, as the second argument)."""
    from minispec.drafters import gate_open

    class Reopening(NgramDrafter):
        def pays(self, seq, continuations):
            history = self.history[id(seq)]
            weight = max((n for _, n in continuations), default=0)
            weight += bool(weight) and self.acceptance(seq) < 0.5
            return gate_open(history.tree_tokens, history.tree_steps, weight, self.pays_rate, self.strong)

    data = json.loads((Path(sys.argv[2]) if sys.argv[2:] else OUTPUTS).read_text())
    for host, (start, end) in STRETCH.items():
        for label, make in (("rule", lambda: NgramDrafter(NGRAM_BUDGET)), ("reopening", lambda: Reopening(NGRAM_BUDGET)),
                            ("reopening, strong 12", lambda: Reopening(NGRAM_BUDGET, strong=12))):
            totals, cells = [0.0, 0.0], []
            for name, d in data.items():
                truth = d["output"] + [2]
                plain = DEVICE_FIXED + (len(truth) - 1) * DEVICE_AHEAD
                ms = replay_device(make(), d["prompt"], truth, start, end)
                totals = [totals[0] + plain, totals[1] + ms]
                cells.append(f"{name} {plain / ms:.2f}")
            print(f"{host} host, {label:<20} all {totals[0] / totals[1]:.3f}  " + " ".join(cells))


def sizes():
    """A tree budget chosen step by step, at the device loop's costs as they would be with a graph per size: a step's
    tree of T nodes is expected to give 1 + the sum of its drafted nodes' values (each the drafter's estimate of the
    chance the target reaches it), so the drafter takes the 4-node tree where that expectation per ms beats the
    16-node one's. Against the engine's rule (16 always) and an oracle that knows which size gives more tokens per ms
    at each step (its bound), for a few costs of the smaller step (H200, stop 59: plain one ahead 0.326 ms; graph
    steps of 4 / 16 nodes 0.674 / 0.856 ms in bench e2e, the device loop's ~0.8 of that)."""
    import math

    from minispec.drafters import best_subtree, continuation_trie

    def kept_values(root, continuations, alpha, nodes, width):
        """ngram_tree's tree with its nodes' values: the tree, and the sum of its drafted nodes' values."""
        tokens, parents, weight = continuation_trie(root, continuations)
        value = [math.inf] * len(tokens)
        for node in range(1, len(tokens)):
            value[node] = (1.0 if parents[node] == 0 else value[parents[node]]) * alpha * weight[node] / weight[parents[node]]
        kept = best_subtree(list(range(len(tokens))), parents, value, nodes, width)  # tokens: the trie's indices
        tree = best_subtree(tokens, parents, value, nodes, width)
        return tree, sum(value[int(i)] for i in kept.tokens[1:])

    class Sized(NgramDrafter):
        """The engine's drafter, with the step's size chosen by expected tokens per ms (cost: size -> ms)."""
        def __init__(self, cost, oracle_truth=None):
            super().__init__(NGRAM_BUDGET)
            self.cost, self.truth, self.sizes = cost, oracle_truth, {4: 0, 16: 0}

        def propose(self, seqs, budgets):
            trees = super().propose(seqs, budgets)
            seq, tree = seqs[0], trees[0]
            if len(tree) <= 4:
                return trees
            continuations = self.continuations(seq)
            alpha = self.acceptance(seq)
            small, small_value = kept_values(int(seq.tokens[-1]), continuations, alpha, 4, self.budget.width)
            _, big_value = kept_values(int(seq.tokens[-1]), continuations, alpha, self.budget.nodes, self.budget.width)
            if self.truth is not None:  # the oracle: the drafts each tree would have accepted, from the truth
                k = len(seq.tokens) - self.offset
                small_value, big_value = (len(accepted_path(t, self.truth, k)) - 1 for t in (small, tree))
            take_small = (1 + small_value) / self.cost(4) >= (1 + big_value) / self.cost(16)
            self.sizes[4 if take_small else 16] += 1
            return [small] if take_small else trees

    AHEAD_H200, (start, end) = 0.326, STRETCH["fast"]
    data = json.loads(OUTPUTS.read_text())
    for c4, c16 in ((0.69, 0.69), (0.60, 0.69), (0.55, 0.69), (0.45, 0.69)):
        cost = {4: c4, 16: c16}.get
        print(f"tree steps of <= 4 nodes {c4} ms, of 16 {c16} ms, plain one ahead {AHEAD_H200}: n-gram x plain per prompt")
        for label, make in (("rule (16)", lambda truth: NgramDrafter(NGRAM_BUDGET)), ("by value", lambda truth: Sized(cost)),
                            ("oracle", lambda truth: Sized(cost, truth))):
            totals, cells, counts = [0.0, 0.0], [], {4: 0, 16: 0}
            for name, d in data.items():
                truth = d["output"] + [2]
                plain = DEVICE_FIXED + (len(truth) - 1) * AHEAD_H200
                drafter = make(truth)
                drafter.offset = len(d["prompt"])
                ms = replay_device(drafter, d["prompt"], truth, start, end, AHEAD_H200, lambda nodes: cost(4 if nodes <= 4 else 16))
                for size, n in getattr(drafter, "sizes", {}).items():
                    counts[size] += n
                totals = [totals[0] + plain, totals[1] + ms]
                cells.append(f"{name} {plain / ms:.2f}")
            taken = f" (4 / 16 nodes taken {counts[4]} / {counts[16]})" if counts[4] + counts[16] else ""
            print(f"  {label:<10} all {totals[0] / totals[1]:.3f}{taken}  " + " ".join(cells))


def lengths():
    """Each stored prompt's ratio to plain decoding for the drafter's longest suffix match (NgramDrafter's max_ngram)
    and its strong match (strong), the engine's (4, 10) first: replayed as the host drafts (with stretches, the costs
    above) and as the device drafts (replay_device, slow and fast host). Stop 66 added "long log" (bench.delivery_log,
    ~2,280 tokens), whose lines share their 4-grams: the most recent 4-gram match is mostly another day's line, the
    tree steps stop paying and the gate closes (1.02 tokens a forward measured, notes/bench_e2e_quick_h200_stop66_longlog.log).
    A longer match finds the line; a strong match then asks for a longer suffix too (21: every suffix of 6 tokens down
    to 1 finds the start, where 10 was every suffix of 4 down to 1)."""
    data = json.loads(OUTPUTS.read_text())
    settings = [(4, 10), (5, 10), (8, 10), (12, 10), (8, 21), (12, 15), (12, 21), (12, 28)]
    costs = [("host", None)] + list(STRETCH.items())
    for label, stretch in costs:
        print(f"\n{label}: n-gram x plain per prompt for (max_ngram, strong)")
        print(f"{'prompt':<10} " + " ".join(f"{f'{n}, {st}':>8}" for n, st in settings))
        totals = [[0.0, 0.0] for _ in settings]
        for name, d in data.items():
            truth = d["output"] + [2]
            cells = []
            for i, (n, st) in enumerate(settings):
                drafter = NgramDrafter(NGRAM_BUDGET, max_ngram=n, strong=st)
                if stretch is None:
                    plain, ms = (len(truth) - 1) * AHEAD, replay(drafter, d["prompt"], truth, True)
                else:
                    plain, ms = DEVICE_FIXED + (len(truth) - 1) * DEVICE_AHEAD, replay_device(drafter, d["prompt"], truth, *stretch)
                totals[i] = [totals[i][0] + plain, totals[i][1] + ms]
                cells.append(plain / ms)
            print(f"{name:<10} " + " ".join(f"{c:>7.2f}x" for c in cells))
        print(f"{'all':<10} " + " ".join(f"{a / b:>7.2f}x" for a, b in totals))


if __name__ == "__main__":
    {"outputs": outputs, "oracle": oracle, "device": device, "reopen": reopen, "sizes": sizes, "lengths": lengths}.get(sys.argv[1] if sys.argv[1:] else "", main)()
