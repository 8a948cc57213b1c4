"""Helpers shared by the tests, scripts/make_golden.py and benches: float64 op references, the
gradient-check harness, the PyTorch twin of the dense model, and the golden cases."""
