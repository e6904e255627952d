"""The empirical privacy audit: which private data a model saw (`provenance`), how much of a planted secret it gives
away (`exposure`), membership inference and the empirical epsilon lower bound (`mia`), the audit of a whole
method at one budget (`method_audit`), and its rows as tables and figures (`audit_report`).
"""
