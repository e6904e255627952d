"""The stages wired through the artifact store: what a run depends on (`settings`), each stage as a cached artifact
and one results row per method (`stages`, `rows`), and the command line (`cli`: `python -m distildp.pipeline`).
"""
