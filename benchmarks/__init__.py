"""miminions benchmark suite (pytest-benchmark); see benchmarks/README.md."""
