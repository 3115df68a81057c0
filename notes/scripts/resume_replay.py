"""Offline replay (no model; see ngram_offline.py): the n-gram drafter plus 'resume' continuations after a copy breaks.
When a tree step accepted at least MINACC drafts of a continuation from source position p and the target's bonus
token then differed from the source's token at p + j, the next proposal also drafts the source from where the copy
would resume: p + j + 1 (the bonus replaced one token: "sub"), p + j ("ins") or p + j + 2 ("del"), at weight W.
Prints each stored prompt's ratio to plain decoding without and with it, at stop 32's H100 step costs.

  python3 notes/scripts/resume_replay.py [HOST ms] [MODES, e.g. sub,ins] [W] [MINACC]

Stop 32 (notes/HISTORY.md, "End to end, stop 32"): every setting tried left rewrite and extract slower or level; the default
model's rewrites are not one-token substitutions of the prompt."""
import sys

sys.path.insert(0, "notes/scripts")
import ngram_offline as no  # noqa: E402
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

    def match_starts(self, seq):
        found = super().match_starts(seq)
        for ptr in self.resume.pop(id(seq), ()):
            if ptr < len(seq.tokens) - 1 and ptr not in found:
                found[ptr] = W
        self.sources[id(seq)] = list(found)
        return found

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


no.compare(lambda prompt, truth: (no.replay(Resume(NGRAM_BUDGET), prompt, truth, True), ""))
