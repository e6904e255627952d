"""DistilDP Lab: differentially private knowledge distillation of language models.

One idea per module: `artifacts` (cached stage outputs), `params` (typed notebook parameters),
`source`/`data` (corpora), `models` (tokenizer, presets, pretraining), `privacy` (accounting),
`dpsgd` (private training on Opacus), `generate` (synthetic text), `distill` (KD losses and
students), `evaluate` (perplexity and its floor), `pipeline` (the stages wired together),
`results` (tables and plots); the empirical privacy audit: `provenance` (a model's training set, from its
manifests), `audit` (canary exposure), `mia` (membership inference and the epsilon lower bound).
"""

__version__ = "0.1.0"
