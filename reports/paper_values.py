"""The paper's published figures (ResNet-56, Tables 1-4), shown beside measured ones; never used as results."""

from __future__ import annotations

PAPER_TABLE1 = {  # clean accuracy (%)
    "mnist": {"baseline": 99.33, "rce": 99.32, "siamese_rvl": 99.37, "pdm": 99.52},
    "cifar10": {"baseline": 93.62, "rce": 93.3, "siamese_rvl": 94.37, "pdm": 93.81},
}
PAPER_TABLE2 = {  # gray-box AUC
    "mnist": {
        "fgsm-0.05": (0.981, 0.983, 0.988), "fgsm-0.1": (0.988, 0.99, 0.995), "bim-0.05": (0.983, 0.967, 0.987),
        "bim-0.1": (0.945, 0.92, 0.99), "cw": (0.994, 1.0, 1.0), "cw-hc": (0.88, 0.98, 1.0), "jsma": (0.995, 1.0, 1.0),
    },
    "cifar10": {
        "fgsm-0.05": (0.958, 0.898, 0.967), "fgsm-0.1": (0.971, 0.926, 0.983), "bim-0.05": (1.0, 0.99, 0.95),
        "bim-0.1": (1.0, 0.996, 0.962), "cw": (0.874, 0.918, 0.933), "cw-hc": (0.637, 0.94, 1.0),
        "jsma": (0.952, 0.96, 0.973),
    },
}
PAPER_TABLE3 = {"mnist": (0.087, 0.104, 0.162), "cifar10": (0.008, 0.019, 0.026)}  # white-box distortion d
PAPER_TABLE4 = {"mnist": (0.88, 0.94, 0.99), "cifar10": (0.93, 0.933, 0.952)}  # black-box AUC
PAPER_DEFENSES = ("baseline", "rce", "pdm")


def paper_dataset(dataset: str) -> str | None:
    """The paper's dataset a measured one corresponds to (the JPEG copy of CIFAR-10 counts, and says so elsewhere)."""
    if dataset == "mnist":
        return "mnist"
    if dataset in ("cifar10", "cifar10-jpeg"):
        return "cifar10"
    return None
