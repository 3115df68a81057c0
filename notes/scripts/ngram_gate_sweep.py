"""The sweep behind drafters.NGRAM_PAYS / NGRAM_STRONG (notes/ngram_gate_stop24.log): ngram_offline.py's replay of the
12 stored prompts with the drafter's own gate off ("current"), then with a gate applied on top: once a sequence's tree
steps have given fewer than c tokens each (a prior of one 3-token step), it drafts only where a suffix match's weight
reaches `strong` (99: never). At HOST 0.1 (the GPU time and plan of a tree step alone) and 0.6 (the host and broken
stretch a tree step costs end to end, which gives the H100's measured ratios). python3 notes/scripts/ngram_gate_sweep.py
[stop29: the replay at stop 29's step costs, notes/ngram_gate_stop29.log]"""
import json
import sys

sys.path.insert(0, "notes/scripts")
import ngram_offline as replay  # noqa: E402
from minispec.drafters import NGRAM_BUDGET, NgramDrafter  # noqa: E402
from minispec.tree import Tree  # noqa: E402

replay.AHEAD, replay.ONE, replay.TREE = 0.568, 0.62, {4: 0.80, 16: 0.85, 32: 1.05, 64: 1.08}


class Gated(NgramDrafter):
    def __init__(self, budget, c, strong, prior=(3.0, 1.0)):
        super().__init__(budget, pays=0.0)  # the drafter's own gate off: every sequence's tree steps "pay"
        self.c, self.gate_strong, self.prior = c, strong, prior
        self.gained = {}  # id(seq) -> (tokens, tree steps)

    def propose(self, seqs, budgets):
        out = []
        for seq, tree in zip(seqs, super().propose(seqs, budgets)):
            tokens, steps = self.gained.get(id(seq), (0, 0))
            rate = (tokens + self.prior[0] * self.prior[1]) / (steps + self.prior[1])
            if len(tree) > 1 and rate < self.c and max((w for _, w in self.continuations(seq)), default=0) < self.gate_strong:
                tree = Tree.single(seq.tokens[-1])
                self.history[id(seq)].tree = tree
            out.append(tree)
        return out

    def commit(self, seq, path, accepted):
        tokens, steps = self.gained.get(id(seq), (0, 0))
        self.gained[id(seq)] = (tokens + len(accepted), steps + 1)
        super().commit(seq, path, accepted)


def run(make, host, label):
    replay.HOST = host
    data, eos = json.loads(replay.OUTPUTS.read_text()), 2
    plain_ms = spec_ms = 0.0
    cells = []
    for name, d in data.items():
        truth = d["output"] + [eos]
        plain = (len(truth) - 1) * replay.AHEAD
        ms = replay.replay(make(), d["prompt"], truth, True)
        plain_ms, spec_ms = plain_ms + plain, spec_ms + ms
        cells.append(f"{name[:6]} {plain / ms:.2f}")
    print(f"{label:<22}", " ".join(cells), f"ALL {plain_ms / spec_ms:.3f}")


if sys.argv[1:] == ["stop29"]:  # stop 29's step costs (H100, notes/bench_e2e_quick_h100_stop29_final.log): plain decode
    # one step ahead 0.336 ms, a tree step 2.7 of them; the gate as shipped (NGRAM_PAYS 3, NGRAM_STRONG 8), stricter ones
    replay.AHEAD, replay.ONE, replay.TREE = 0.336, 0.365, {4: 0.80, 16: 0.895, 32: 1.11, 64: 1.15}
    for host in (0.6, 0.4):
        print("HOST", host)
        run(lambda: NgramDrafter(NGRAM_BUDGET), host, "no gate")
        for c in (3.0, 3.5, 4.0):
            for strong in (8, 10, 99):
                run(lambda: Gated(NGRAM_BUDGET, c, strong), host, f"c {c} strong {strong}")
    sys.exit()
for host in (0.1, 0.6):
    print("HOST", host)
    run(lambda: NgramDrafter(NGRAM_BUDGET), host, "current")
    for c in (2.0, 2.6, 3.0):
        for strong in (4, 6, 8, 99):
            run(lambda: Gated(NGRAM_BUDGET, c, strong), host, f"c {c} strong {strong}")
