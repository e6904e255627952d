"""DistilDP Lab: differentially private knowledge distillation of language models.

Subpackages by idea, each importing only those listed before it (tests/test_layout.py checks; docs/architecture.md
says who owns what):
- `core`: the artifact store, processes, hub access, method names;
- `data`: the built-in source and public text, corpora by name, canaries;
- `lm`: models, training, losses, perplexity, sampling;
- `dp`: accounting, the DP histogram, DP-SGD;
- `distill`: synthetic text (stage 2) and students trained on it with the KD loss (stage 3);
- `reporting`: tables, figures, the story;
- `pipeline`: settings and the stages wired through the store (stage 1 to the results row);
- `audit`: the empirical privacy audit;
- `teaching`: notebooks, exercises, grading, the book;
- `runner`: the experiment runner for grids of points.
"""

__version__ = "0.1.0"
