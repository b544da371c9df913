"""Benchmarks of the realtime payments service (issue 5); see BENCHMARKS.md."""
