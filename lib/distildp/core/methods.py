"""The names of what the pipeline runs, in a module that imports nothing: the results tables and notebook 07
read them without loading torch.

A *method* spends a total privacy budget epsilon on the private data and ends in a student. A *reference* is
one model that brackets the methods: pretrained_<role> saw public data only (epsilon 0), nonprivate_<role> was
fine-tuned on the private data without DP (epsilon infinity).

DP-OPD distils from a frozen teacher of one of OPD_TEACHERS. Only with a `public` or `dp` teacher does its epsilon
cover every use of the private data; a `nonprivate` teacher saw it without DP, and the row says what its epsilon
covers (`epsilon_covers`), which the tables print beside the method's name (`method_label`).
"""

from __future__ import annotations

import math

METHODS = ("distildp", "synthetic_only", "dpsgd", "dpkd", "dpopd")
REFERENCES = ("pretrained_teacher", "pretrained_student", "nonprivate_teacher", "nonprivate_student")
# DP-OPD's frozen teacher: the pretrained one (public data only), DistilDP's DP teacher (its budget composed with the
# student's) or one fine-tuned on the private data without DP
OPD_TEACHERS = ("public", "dp", "nonprivate")
COVERS_ALL = "every use of the private data"
COVERS_STUDENT_ONLY = "student updates only"


def epsilon_covers(method: str, opd_teacher: str = "") -> str:
    """What a method's epsilon covers: every use of the private data, or (DP-OPD with a non-private teacher) the
    student's updates only."""
    check_method(method, references=False)
    return COVERS_STUDENT_ONLY if method == "dpopd" and opd_teacher == "nonprivate" else COVERS_ALL


def method_label(method: str, opd_teacher: str = "", covers: str = "") -> str:
    """A method's name as tables print it: DP-OPD with its teacher, and a row whose epsilon does not cover every use
    of the private data marked with what it does cover (`covers`, the row's epsilon_covers, or what the method and
    teacher imply when the row does not say)."""
    if method not in METHODS:
        return method
    label = f"{method} ({opd_teacher or 'unrecorded'} teacher)" if method == "dpopd" else method
    implied = epsilon_covers(method, opd_teacher)
    shown = covers if covers and covers != COVERS_ALL else implied
    return label if shown == COVERS_ALL else f"{label} [epsilon covers {shown}]"


def method_of(label: str) -> str:
    """The method (or reference) a table's label names: `method_label`'s inverse, for rows read back from tables."""
    name = str(label).split(" ", 1)[0]
    return name if name in METHODS + REFERENCES else str(label)


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
