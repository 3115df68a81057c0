"""The sweep behind drafters.NGRAM_PAYS / NGRAM_STRONG (notes/ngram_gate_stop24.log): the replay of ngram_offline.py with the
drafter's gate off ("current") and a gate at (c, strong) applied on top, at HOST 0.1 and 0.6. python3 notes/scripts/ngram_gate_sweep.py"""
import json, sys
sys.path.insert(0, "notes/scripts")
import ngram_offline as N
from minispec.drafters import NGRAM_BUDGET, NgramDrafter
from minispec.tree import Tree
import minispec.drafters as D
D.NGRAM_PAYS = 0.0  # the built-in gate off: the rows below are the drafter without it ("current") and with the gate at (c, strong)
N.AHEAD, N.ONE, N.TREE = 0.568, 0.62, {4: 0.80, 16: 0.85, 32: 1.05, 64: 1.08}
class Gated(NgramDrafter):
    def __init__(self, budget, c, strong, prior=(3.0, 1.0)):
        super().__init__(budget); self.c, self.strong, self.prior = c, strong, prior; self.got = {}
    def propose(self, seqs, budgets):
        out = []
        for seq, tree in zip(seqs, super().propose(seqs, budgets)):
            tok, steps = self.got.get(id(seq), (0, 0))
            rate = (tok + self.prior[0] * self.prior[1]) / (steps + self.prior[1])
            if len(tree) > 1 and rate < self.c:
                best = max((w for _, w in self.continuations(seq)), default=0)
                if best < self.strong:
                    tree = Tree.single(seq.tokens[-1]); self.history[id(seq)].tree = tree
            out.append(tree)
        return out
    def commit(self, seq, path, accepted):
        tok, steps = self.got.get(id(seq), (0, 0)); self.got[id(seq)] = (tok + len(accepted), steps + 1)
        super().commit(seq, path, accepted)
def run(make, host, label):
    N.HOST = host
    data, eos = json.loads(N.OUTPUTS.read_text()), 2
    tot = [0, 0]; res = []
    for name, d in data.items():
        truth = d["output"] + [eos]
        plain = (len(truth) - 1) * N.AHEAD
        ms = N.replay(make(), d["prompt"], truth, True)
        tot[0] += plain; tot[1] += ms; res.append(f"{name[:6]} {plain/ms:.2f}")
    print(f"{label:<22}", " ".join(res), f"ALL {tot[0]/tot[1]:.3f}")
for host in (0.1, 0.6):
    print("HOST", host)
    run(lambda: NgramDrafter(NGRAM_BUDGET), host, "current")
    for c in (2.0, 2.6, 3.0):
        for strong in (4, 6, 8, 99):
            run(lambda: Gated(NGRAM_BUDGET, c, strong), host, f"c {c} strong {strong}")
