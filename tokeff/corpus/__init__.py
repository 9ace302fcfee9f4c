"""Corpus-scale jobs: one reader for every corpus format, per-document scorers, the local and Ray engines."""
