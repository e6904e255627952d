"""The built-in source is the same on every machine: numpy's SIMD paths (AVX-512, AVX2, baseline) differ in the
last bits of exp, log and power, so the golden values below are checked with each of them masked in turn
(`NPY_DISABLE_CPU_FEATURES`, one subprocess each). Run on another CPU, the same goldens must hold."""
import json
import os
import subprocess
import sys

import pytest

# What every machine must print: the source's fingerprint, a hash of its tables' exact bits, a hash of a
# sampled corpus, and the exact nats of that corpus (the floor's numerator; log and logsumexp run through
# numpy's SIMD code, so it is compared to a relative tolerance of 1e-10 instead of bit for bit).
# They change only when ReviewSource's defaults, the frozen public text or the built-in corpus change, and then
# results/ and the README's expected numbers must be regenerated with them.
GOLDEN = {"fingerprint": "1766379613a8cb70", "table_bits": "1772ba7c2bd89561", "corpus": "a6a9350e660195b3",
          "nats_given_codes": 18622.362134103067, "nats_marginal": 19068.038986299423}
PROBE = r"""
import hashlib, json
import numpy as np
from distildp.data import load_corpus
from distildp.source import ReviewSource

source = ReviewSource(0)
tables = [source.p_category, source.p_stars, source.p_topic, source.topic.probs, source.category.probs,
          source.sentiment.probs, source.general.probs, source.bigram.probs, source.p_punct, source.hazard]
corpus = load_corpus("builtin", n_train=50, n_val=10, n_test=200)
texts, codes = corpus.texts("test"), corpus.codes("test")
print(json.dumps({
    "fingerprint": source.fingerprint,
    "table_bits": hashlib.sha256(b"".join(np.ascontiguousarray(t).tobytes() for t in tables)).hexdigest()[:16],
    "corpus": hashlib.sha256("\n".join(corpus.texts("train") + texts).encode()).hexdigest()[:16],
    "nats_given_codes": -float(source.log_prob_batch(texts, codes).sum()),
    "nats_marginal": -float(source.log_prob_marginal_batch(texts, corpus.info["categories"]).sum()),
}))
"""
# numpy's dispatch targets on x86-64; unknown names are ignored on other architectures.
MASKS = {"native": "", "no AVX-512": "X86_V4 AVX512_ICL AVX512_SPR",
         "no AVX2/AVX-512": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"}


def probe(mask: str) -> dict:
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": mask}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def probes():
    return {name: probe(mask) for name, mask in MASKS.items()}


def test_source_tables_and_corpus_are_identical_under_every_simd_level(probes):
    native = probes["native"]
    for name, result in probes.items():
        for key in ("fingerprint", "table_bits", "corpus"):
            assert result[key] == native[key], f"{key} differs with {name}: {result[key]} != {native[key]}"
        for key in ("nats_given_codes", "nats_marginal"):
            assert result[key] == pytest.approx(native[key], rel=1e-12), (name, key)


def test_golden_values_hold_on_this_machine(probes):
    for name, result in probes.items():
        assert result["fingerprint"] == GOLDEN["fingerprint"], name
        for key in ("table_bits", "corpus"):
            assert result[key] == GOLDEN[key], (name, key)
        for key in ("nats_given_codes", "nats_marginal"):
            assert result[key] == pytest.approx(GOLDEN[key], rel=1e-10), (name, key)
