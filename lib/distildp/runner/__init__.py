"""The experiment runner (`python -m distildp.runner`): a grid file's keys and values, checked (`grid_file`), and
the grid expanded into points (`grids`); a point's directory, lock and resumption (`points`); points run in child
processes that die with the runner (`processes`); a grid's run and its tables (`run`); points as cluster jobs
(`jobs`) through submitit (`executors`); the command line (`cli`); where a grid's core-seconds went (`profile`) and
fault injection that kills and resumes a run (`faults`).
"""
