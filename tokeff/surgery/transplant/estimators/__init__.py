"""Transplant estimators, one module each, registered in `combination.ESTIMATORS` (`--method NAME`)."""
