"""Benchmarks (`hvdat bench ...`)."""
