"""DistilDP Lab: differentially private knowledge distillation of language models.

One idea per module (docs/architecture.md says who owns what): the built-in data (`source`, `lexicon`,
`public_text`); corpora (`corpus`, `data`, `csv_corpus`, `hub_corpora`, `canaries`); models and private training
(`models`, `hub`, `training`, `dpsgd`, `private_training`, `bookkeeping`, `conv1d_grad_sampler`, `privacy`,
`epsilon_cache`, `histogram`); synthetic text (`sampling`, `generate`, `synthetic_store`); distillation and evaluation
(`distill`, `fused_loss`, `teacher_cache`, `synthetic_training`, `evaluate`); the stages wired through the store
(`config`, `methods`, `pipeline`, `cli`, `artifacts`, `distributed`); the results (`rows`, `results`, `report`,
`story`); the empirical privacy audit (`provenance`, `audit`, `mia`, `privacy_audit`); teaching (`notebooks`,
`exercises`, `dp_exercises`, `model_exercises`, `grading`, `book`).
"""

__version__ = "0.1.0"
