#!/usr/bin/env python3
"""Scores a corpus ({"regions": [{"id", "candidate", "references"}]}) with pycocoevalcap 1.2,
as COCOEvalCap does (PTBTokenizer, Bleu(4), Meteor, Rouge, Cider), and prints the corpus
scores and the time of each stage as JSON. Used by scripts/compare-pycocoevalcap.sh."""

import contextlib
import json
import sys
import time


def main():
    # pycocoevalcap prints BLEU's statistics to stdout; keep stdout for the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(sys.argv[1])
    print(json.dumps(result))


def run(path):
    t0 = time.perf_counter()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with open(path, encoding="utf-8") as f:
        regions = json.load(f)["regions"]
    gts = {r["id"]: [{"caption": c} for c in r["references"]] for r in regions}
    res = {r["id"]: [{"caption": r["candidate"]}] for r in regions}
    times = {"read": time.perf_counter() - t0}

    t = time.perf_counter()
    tok = PTBTokenizer()
    gts = tok.tokenize(gts)
    res = tok.tokenize(res)
    times["tokenize"] = time.perf_counter() - t

    scores = {}
    for name, scorer in [("bleu", Bleu(4)), ("meteor", Meteor()), ("rouge_l", Rouge()), ("cider_d", Cider())]:
        t = time.perf_counter()
        score, _ = scorer.compute_score(gts, res)
        times[name] = time.perf_counter() - t
        if name == "bleu":
            for k in range(4):
                scores[f"bleu{k + 1}"] = score[k]
        else:
            scores[name] = score
    times["total"] = time.perf_counter() - t0
    return {"n_regions": len(regions), "scores": scores, "seconds": times}


if __name__ == "__main__":
    main()
