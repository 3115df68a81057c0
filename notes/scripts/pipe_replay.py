"""Offline replay (no model; see ngram_offline.py) of a schedule that keeps the host off the GPU's path: a plain step
behind every tree step (the device would accept the tree's path and place the plain step at the bonus); during every
plain step the host drafts D rooted at that step's root, and the next step is D's subtree under its first child,
rooted at the plain step's output, on the device (a wasted tree where that output is not the child). No host gaps are
priced, only what a plain step does not hide (OVERRUN). Prints each stored prompt's ratio to plain decoding for the
engine's schedule and for this one.

  python3 notes/scripts/pipe_replay.py [HOST ms] [T = 16 tree ms] [OVERRUN ms]

Stop 32 (notes/HISTORY.md, "End to end, stop 32"): rewrite 1.82 -> 1.62x, extract 2.14 -> 2.32x, all 12 prompts 1.03 -> 1.05x
at HOST 0.3: the plain step costs what the host's gap did, and the tree behind it loses its draft's first level."""
import sys

sys.path.insert(0, "notes/scripts")
import ngram_offline as no  # noqa: E402
from minispec.drafters import NGRAM_BUDGET, NgramDrafter  # noqa: E402
from minispec.tree import Tree  # noqa: E402

no.AHEAD, no.ONE = 0.296, 0.33  # stop 31-32's H100 costs: plain one ahead, a lone one-node step
TREE16 = float(sys.argv[2]) if len(sys.argv) > 2 else 0.70
no.TREE = {4: TREE16, 16: TREE16, 32: 0.95, 64: 1.0}
no.HOST = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
OVERRUN = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0  # host time a plain step does not hide
ACCEPT = 0.01  # the device's accept kernel


def subtree(D, top):
    """D's nodes under `top`, re-rooted there: (Tree, map new id -> D id)."""
    keep, parents, ids = [top], [-1], {top: 0}
    for n in range(top + 1, len(D)):
        p = int(D.parents[n])
        if p in ids:
            ids[n] = len(keep); keep.append(n); parents.append(ids[p])
    return Tree([D.token_list[n] for n in keep], parents), keep


def walk(tree, truth, k):
    node, path = 0, [0]
    while k + len(path) - 1 < len(truth):
        child = next((c for c in tree.children(node) if tree.token_list[c] == truth[k + len(path) - 1]), None)
        if child is None:
            break
        node = child; path.append(child)
    return path


def replay_pipe(drafter, prompt, truth, stats):
    seq, k, ms = no.Seq(prompt + truth[:1]), 1, 0.0
    big = [1 << 20]
    while k < len(truth):
        # a plain step (root seq.tokens[-1] known to the host): the host drafts D meanwhile
        D = drafter.propose([seq], big)[0]
        t = truth[k]
        ms += no.AHEAD
        if len(D) == 1:
            drafter.commit(seq, [0], [t]); seq.tokens.append(t); k += 1
            stats["plain"] += 1
            continue
        ms += OVERRUN
        d1 = D.children(0)[0]
        sub, ids = subtree(D, d1)
        if D.token_list[d1] != t:  # the tree behind it is rooted at t, its drafts under d1: wasted
            drafter.commit(seq, [0], [t]); seq.tokens.append(t); k += 1
            stats["plain"] += 1
            if k < len(truth):
                ms += no.TREE[16] + ACCEPT
                seq.tokens.append(truth[k]); k += 1
                stats["wasted"] += 1
            continue
        seq.tokens.append(t); k += 1; stats["plain"] += 1
        if k >= len(truth):
            break
        path = walk(sub, truth, k)
        accepted = truth[k : k + len(path)]
        drafter.commit(seq, [0] + [ids[n] for n in path], [t] + accepted)
        seq.tokens += accepted; k += len(accepted)
        ms += no.TREE[16] + ACCEPT
        stats["tree"] += 1; stats["tree_tokens"] += len(accepted)
    return ms


def pipelined(prompt, truth):
    stats = dict(plain=0, tree=0, wasted=0, tree_tokens=0)
    return replay_pipe(NgramDrafter(NGRAM_BUDGET), prompt, truth, stats), stats


no.compare(pipelined)
