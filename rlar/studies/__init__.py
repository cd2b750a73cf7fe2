"""Studies around the loop: config-file ablations, their reports, and benchmarks."""
