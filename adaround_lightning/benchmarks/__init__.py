"""Side-by-side benchmarks against other AdaRound implementations (run in their own venvs)."""
