"""The stages wired through the artifact store: what a run depends on (`settings`), what every stage reads
(`context`), a method's privacy plan (`privacy_plan`), the stages themselves (`public_models`, `private_models`,
`synthetic_stage`, `students`), the front that runs a method at a budget (`front`: `Pipeline`, re-exported here),
its results row (`rows`), the check before the spend on a user's data (`preflight`) and the command line (`cli`:
`python -m distildp.pipeline`).
"""

from distildp.pipeline.front import Pipeline

__all__ = ["Pipeline"]
