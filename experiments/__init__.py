"""Runnable scripts and configs: train, evaluate, reproduce, benchmark, plot."""
