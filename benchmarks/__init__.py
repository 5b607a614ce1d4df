"""Load and latency benchmarks; they live outside the package."""
