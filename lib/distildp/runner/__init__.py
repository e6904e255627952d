"""The experiment runner (`python -m distildp.runner`): grid files and their points (`grids`), running points in
processes with locks and resumption (`run`), cluster jobs through submitit (`executors`), where a grid's
core-seconds went (`profile`) and fault injection that kills and resumes a run (`faults`).
"""
