"""`python -m distildp.pipeline`: build the embedded default's public models and check gate 1, or one method's
artifacts at a budget and seed (with torchrun, on N processes). The stages themselves are `distildp.pipeline`'s.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from distildp.core import distributed
from distildp.core.artifacts import ArtifactStore
from distildp.core.methods import METHODS, REFERENCES
from distildp.data.lengths import LONG_DOCUMENTS
from distildp.pipeline import Pipeline, preflight
from distildp.pipeline.public_models import pretrained
from distildp.pipeline.settings import PROFILES, make_settings
from distildp.reporting.results import GATE_1_RATIO


def main(argv: list[str] | None = None) -> int:
    """`python -m distildp.pipeline [--profile quick]`: build the public models of the embedded default (tokenizer,
    pretrained teacher and student) and print their test perplexities beside the exact floor, and gate 1.
    With --method, build that method's artifacts at --epsilon and --seed instead, and print them and its row.
    `torchrun --nproc_per_node N -m distildp.pipeline --world-size N ...` trains its DP stages on N processes."""
    parser = argparse.ArgumentParser(prog="python -m distildp.pipeline", description=main.__doc__)
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    parser.add_argument("--store", default=None, help="artifact store directory (default: .artifacts/)")
    parser.add_argument("--method", default=None, choices=METHODS + REFERENCES, help="build this method's artifacts")
    parser.add_argument("--epsilon", type=float, default=2.0, help="the method's total budget (with --method)")
    parser.add_argument("--seed", type=int, default=0, help="the method's seed (with --method)")
    parser.add_argument(
        "--world-size", type=int, default=1, help="processes, as launched by torchrun --nproc_per_node (default 1)"
    )
    parser.add_argument("--dataset", default=None, help="the private corpus (e.g. csv:DIR; default: the profile's)")
    parser.add_argument("--public", default=None, help="the public corpus (e.g. csv:DIR; default: the profile's)")
    parser.add_argument("--max-length", type=int, default=None, help="longest document in tokens (Settings.max_length)")
    parser.add_argument("--long-documents", default=None, choices=LONG_DOCUMENTS, help="refuse or truncate longer ones")
    parser.add_argument(
        "--check",
        action="store_true",
        help="the check before the spend: lengths, gate 1, the code-format probe, stage time estimates, the regime",
    )
    parser.add_argument("--calibrate", default=None, metavar="STORE", help="print STAGE_FACTORS measured from STORE")
    args = parser.parse_args(argv)
    overrides = {"world_size": args.world_size} if args.world_size != 1 else {}
    for key, value in (
        ("dataset", args.dataset),
        ("public_corpus", args.public),
        ("max_length", args.max_length),
        ("long_documents", args.long_documents),
    ):
        if value is not None:
            overrides[key] = value
    if args.dataset and args.dataset != "builtin":
        overrides.setdefault("dataset_options", {})  # the profile's built-in sizes do not apply
    pipe = Pipeline(make_settings(args.profile, overrides), ArtifactStore(args.store) if args.store else None)
    if args.calibrate:
        _say(json.dumps(preflight.calibrate(pipe, Path(args.calibrate)), indent=1))
        return 0
    if args.check:
        preflight.print_report(preflight.check(pipe), say=_say)
        return 0
    if args.method:
        return _build_method(pipe, args.method, args.epsilon, args.seed)
    return _build_public(pipe)


def _say(*args) -> None:
    """print, from one process only (the others build the same things)."""
    if distributed.is_main():
        print(*args, flush=True)


def _build_public(pipe: Pipeline) -> int:
    corpus = pipe.corpus
    _say(
        f"private corpus {pipe.settings.dataset!r}: "
        + ", ".join(f"{split} {len(frame)}" for split, frame in corpus.splits.items())
    )
    ppl = {}
    for role in ("teacher", "student"):
        art = pretrained(pipe, role)
        ppl[role] = art.metrics["test_ppl"]
        floor_text = f"   floor {art.metrics['floor']:.2f}" if "floor" in art.metrics else ""
        _say(
            f"pretrained {role} ({pipe.model_name(role)}) test perplexity {ppl[role]:8.2f}{floor_text}"
            f"   (plain text; {art.path})"
        )
    ratio = ppl["teacher"] / ppl["student"]
    _say(
        f"gate 1: pretrained teacher / student = {ratio:.3f}: {'PASS' if ratio <= GATE_1_RATIO else 'FAIL'} "
        f"(<= {GATE_1_RATIO})"
    )
    return 0


def _build_method(pipe: Pipeline, method: str, epsilon: float, seed: int) -> int:
    started = time.time()
    arts = pipe.artifacts(method, epsilon, seed)
    for name, art in arts.items():
        processes = art.manifest["built_on"].get("world_size", 1)
        spent = art.privacy.get("epsilon")
        spent_text = f"   epsilon {spent:.3f}" if isinstance(spent, float) and math.isfinite(spent) else ""
        ppl = art.metrics.get("test_ppl")
        ppl_text = f"   test perplexity {ppl:.2f}" if ppl is not None else ""
        built_by = f"built by {processes} processes" if processes > 1 else "built by one process"
        _say(f"{name}: {art.stage} {art.key} ({built_by}){ppl_text}{spent_text}   {art.path}")
    row = pipe.run(method, epsilon, seed)  # read back from the store
    _say(json.dumps({k: row[k] for k in ("method", "epsilon", "epsilon_spent", "seed", "student_ppl", "teacher_ppl")}))
    _say(f"{time.time() - started:.1f} s on {pipe.settings.world_size} process(es)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
