"""Offline replay (no model; see ngram_offline.py): the n-gram drafter plus 'resume' continuations after a copy breaks.
When a tree step accepted at least MINACC drafts of a continuation from source position p and the target's bonus
token then differed from the source's token at p + j, the next proposal also drafts the source from where the copy
would resume: p + j + 1 (the bonus replaced one token: "sub"), p + j ("ins") or p + j + 2 ("del"), at weight W.
Prints each stored prompt's ratio to plain decoding without and with it, at stop 32's H100 step costs.

  python3 notes/scripts/resume_replay.py [HOST ms] [MODES, e.g. sub,ins] [W] [MINACC]

Stop 32 (README, "End to end, stop 32"): every setting tried left rewrite and extract slower or level; the default
model's rewrites are not one-token substitutions of the prompt."""
import json
import sys

sys.path.insert(0, "notes/scripts")
import ngram_offline as no  # noqa: E402
from minispec import drafters  # noqa: E402
from minispec.drafters import NGRAM_BUDGET, NgramDrafter  # noqa: E402

no.AHEAD, no.ONE = 0.296, 0.33  # stop 31-32's H100 costs: plain one ahead, a lone one-node step
no.TREE = {4: 0.70, 16: 0.70, 32: 0.95, 64: 1.0}
no.HOST = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
MODES = sys.argv[2].split(",") if len(sys.argv) > 2 else ["sub"]
W = int(sys.argv[3]) if len(sys.argv) > 3 else 8
MINACC = int(sys.argv[4]) if len(sys.argv) > 4 else 2


class Resume(NgramDrafter):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.sources, self.resume = {}, {}

    def continuations(self, seq):
        grams, tokens, found, matches = self.update_index(seq), seq.tokens, {}, 0
        shortest = 1 if self.acceptance(seq) >= 0.5 else 2
        for n in range(min(self.max_ngram, len(tokens) - 1), shortest - 1, -1):
            starts = grams.get(tuple(tokens[-n:]), ())
            if n == 1 and not found and len(starts) > drafters.NGRAM_COMMON:
                break
            for start in reversed(starts):
                if start >= len(tokens):
                    continue
                found[start] = found.get(start, 0) + n
                matches += 1
                if matches >= self.max_matches:
                    break
            if matches >= self.max_matches:
                break
        for ptr in self.resume.pop(id(seq), ()):
            if ptr < len(tokens) - 1 and ptr not in found:
                found[ptr] = W
        self.sources[id(seq)] = list(found)
        return [(tokens[start : start + self.budget.depth], weight) for start, weight in found.items()]

    def commit(self, seq, path, accepted):
        tree = self.history[id(seq)].tree
        super().commit(seq, path, accepted)
        j = len(path) - 1
        if len(tree) <= 1 or j < MINACC:
            return
        for start in self.sources.get(id(seq), ()):
            cont = seq.tokens[start : start + j + 1]
            if cont[:j] == accepted[:j] and len(cont) > j:
                p = start + j  # the source token the bonus replaced
                ptrs = {"sub": p + 1, "ins": p, "del": p + 2}
                self.resume[id(seq)] = [ptrs[m] for m in MODES]
                return


data = json.loads(no.OUTPUTS.read_text())
tot = [0, 0, 0]
for name, d in data.items():
    truth = d["output"] + [2]
    plain = (len(truth) - 1) * no.AHEAD
    a = no.replay(NgramDrafter(NGRAM_BUDGET), d["prompt"], truth, True)
    b = no.replay(Resume(NGRAM_BUDGET), d["prompt"], truth, True)
    tot = [tot[0] + plain, tot[1] + a, tot[2] + b]
    print(f"{name:<10} {plain / a:.2f}x -> {plain / b:.2f}x")
print(f"all        {tot[0] / tot[1]:.2f}x -> {tot[0] / tot[2]:.2f}x")
