"""Side-by-side performance scripts (run each as ``python -m benchmarks.<name>``); results go under .bench/."""
