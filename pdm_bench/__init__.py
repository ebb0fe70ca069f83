"""pdm-bench: reproduce and extend PDM (penetration distortion maximisation) adversarial-detection benchmarks."""

__version__ = "0.1.0"
