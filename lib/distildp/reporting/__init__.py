"""Results rows into tables, gates and the verdict (`results`), figures and the report on disk (`report`), and the
results told in sentences (`story`).
"""
