"""The built-in source is the same on every machine: numpy's SIMD paths (AVX-512, AVX2, baseline) differ in the
last bits of exp, log and power, so the golden values below are checked with each of them masked in turn
(`NPY_DISABLE_CPU_FEATURES`, one subprocess each). Run on another CPU, the same goldens must hold."""

import json
import os
import subprocess
import sys

import pytest

# What every machine must print: the source's fingerprint, a hash of its tables' exact bits, a hash of a
# sampled corpus and of sampled public text, and the exact nats of that corpus (the floor's numerator; log and
# logsumexp run through numpy's SIMD code, so it is compared to a relative tolerance of 1e-10, not bit for bit).
# They change only when ReviewSource's defaults, the frozen prose or the built-in corpora change, and then
# results/ and the README's expected numbers must be regenerated with them.
GOLDEN = {
    "fingerprint": "c35ace4a68a0645b",
    "table_bits": "27e40f9cbd086dcb",
    "corpus": "be1faa2600a5961a",
    "public": "8fdf58714a5000bc",
    "nats_given_codes": 18617.463226636195,
    "nats_marginal": 19063.1421391273,
}
PROBE = r"""
import hashlib, json
import numpy as np
from distildp.data.loaders import load_corpus, load_public
from distildp.data.source import ReviewSource

source = ReviewSource(0)
tables = [source.p_category, source.p_stars, source.p_topic, source.topic.probs, source.category.probs,
          source.sentiment.probs, source.general.probs, source.bigram.probs, source.p_punct, source.hazard]
corpus = load_corpus("builtin", n_train=50, n_val=10, n_test=200)
texts, codes = corpus.texts("test"), corpus.codes("test")
public = load_public("builtin", n_docs=100, n_val=20, source=source)
prefixes = public.train_prefixes + public.validation_prefixes
public_docs = [p + t for p, t in zip(prefixes, public.train + public.validation)]
print(json.dumps({
    "fingerprint": source.fingerprint,
    "table_bits": hashlib.sha256(b"".join(np.ascontiguousarray(t).tobytes() for t in tables)).hexdigest()[:16],
    "corpus": hashlib.sha256("\n".join(corpus.texts("train") + texts).encode()).hexdigest()[:16],
    "public": hashlib.sha256("\n".join(public_docs).encode()).hexdigest()[:16],
    "nats_given_codes": -float(source.log_prob_batch(texts, codes).sum()),
    "nats_marginal": -float(source.log_prob_marginal_batch(texts, corpus.info["categories"]).sum()),
}))
"""
# numpy's dispatch targets on x86-64; unknown names are ignored on other architectures.
MASKS = {
    "native": "",
    "no AVX-512": "X86_V4 AVX512_ICL AVX512_SPR",
    "no AVX2/AVX-512": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}


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
        for key in ("fingerprint", "table_bits", "corpus", "public"):
            assert result[key] == native[key], f"{key} differs with {name}: {result[key]} != {native[key]}"
        for key in ("nats_given_codes", "nats_marginal"):
            assert result[key] == pytest.approx(native[key], rel=1e-12), (name, key)


def test_golden_values_hold_on_this_machine(probes):
    for name, result in probes.items():
        assert result["fingerprint"] == GOLDEN["fingerprint"], name
        for key in ("table_bits", "corpus", "public"):
            assert result[key] == GOLDEN[key], (name, key)
        for key in ("nats_given_codes", "nats_marginal"):
            assert result[key] == pytest.approx(GOLDEN[key], rel=1e-10), (name, key)
