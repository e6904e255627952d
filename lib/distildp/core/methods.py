"""The names of what the pipeline runs, in a module that imports nothing: the results tables and notebook 07
read them without loading torch.

A *method* spends a total privacy budget epsilon on the private data and ends in a student. A *reference* is
one model that brackets the methods: pretrained_<role> saw public data only (epsilon 0), nonprivate_<role> was
fine-tuned on the private data without DP (epsilon infinity).
"""

from __future__ import annotations

import math

METHODS = ("distildp", "synthetic_only", "dpsgd", "dpkd")
REFERENCES = ("pretrained_teacher", "pretrained_student", "nonprivate_teacher", "nonprivate_student")


def check_method(method: str, references: bool = True) -> str:
    """`method` if it names a method (or, with `references`, a reference model); else a ValueError listing them."""
    known = METHODS + REFERENCES if references else METHODS
    if method not in known:
        hint = f" ({method} is a reference model: a grid lists it under `references:`)" if method in REFERENCES else ""
        raise ValueError(f"unknown method {method!r}; choose from {list(known)}{hint}")
    return method


def reference_role(reference: str) -> str:
    """'teacher' or 'student': which model a reference is."""
    if reference not in REFERENCES:
        raise ValueError(f"{reference!r} is not a reference; choose one of {REFERENCES}")
    return reference.rsplit("_", 1)[1]


def reference_epsilon(reference: str) -> float:
    """What a reference spent: 0 for a pretrained model (no private data), infinity for a non-private one."""
    reference_role(reference)
    return 0.0 if reference.startswith("pretrained") else math.inf


def describe_reference(reference: str) -> str:
    return (
        "public data only, epsilon = 0"
        if reference_epsilon(reference) == 0
        else "fine-tuned on the private data without DP, epsilon = inf"
    )
