"""Results rows into tables, gates and the verdict (`results`), the regime map's table (`regime`), figures and the
report on disk (`report`), and the results told in sentences (`story`).
"""
