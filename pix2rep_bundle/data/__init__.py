"""Data: the synthetic cardiac MR phantom, ACDC-layout reading and preparation, slice datasets."""
