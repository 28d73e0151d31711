"""task_families.py: the task sets that train.py meta-trains on, beyond single named tasks:
Celo's meta-training tasks (arXiv 2501.12670, App. A.4: MLP 64 → 32 → 10 on each 8×8 grey-scale
dataset, one structure, so their data stack) and a random family of small task structures drawn
from a documented distribution (sample_task_family, train.py's task_set="family").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data import DATASETS, InvalidOptionError, _choose, dataset_available
from tasks import (Task, _check_int, byte_lm, image_autoencoder, image_conv, image_mlp,
                   teacher_student)

CELO_DATASETS = ("fashion_mnist_8x8", "mnist_8x8", "cifar10_grey_8x8")  # Celo App. A.4 (no SVHN)


def celo_meta_training_tasks(datasets: Sequence[str] | None = None) -> list[Task]:
    """The Celo meta-training tasks (App. A.4): MLP 64 → 32 → 10, ReLU, batch 64, 8×8 grey.

    One task per dataset, all with the same structure, so their data stack (tasks.stack_data) and
    one loss / sample_batch serves all of them under vmap. datasets=None takes the embedded
    Fashion-MNIST plus MNIST and CIFAR-10 when their files are already in the cache directory
    (never downloads); an explicit list loads exactly those (downloading when missing). SVHN,
    the paper's fourth dataset, is not supported (its files are MATLAB .mat).
    """
    if datasets is None:
        datasets = [d for d in CELO_DATASETS if dataset_available(d)]
    if isinstance(datasets, str) or not datasets:
        raise InvalidOptionError(f"datasets must be a non-empty list of names, got {datasets!r}")
    valid = [d for d, s in DATASETS.items() if s.size == 8 and s.variant != "5class"]
    out = []
    for d in datasets:
        _choose("8x8 ten-class dataset", d, valid)
        out.append(image_mlp(d, hidden=(32,), activation="relu", batch_size=64)
                   ._replace(name=f"celo_{d}"))
    return out


# The documented distribution of sample_task_family: kinds with probabilities, then per kind a
# uniform choice of each structural option below. All are small and CPU-cheap.
FAMILY_KIND_PROBS = {"image_mlp": 0.45, "image_conv": 0.15, "image_autoencoder": 0.1,
                     "teacher_student": 0.15, "byte_lm": 0.1, "memorization": 0.05}
FAMILY_DATASETS = ("fashion_mnist_8x8", "fashion_mnist_16x16", "fashion_mnist_8x8_inverted",
                   "fashion_mnist_8x8_5class")
FAMILY_WIDTHS = (16, 32, 64, 128)       # image MLP width (all hidden layers alike)
FAMILY_DEPTHS = (1, 2, 3)               # image MLP hidden layers
FAMILY_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu")
FAMILY_BATCH_SIZES = (32, 64, 128)
FAMILY_LAYERNORM_PROB = 0.25
FAMILY_CONV_CHANNELS = ((8, 16), (16, 32), (16, 16, 32))
FAMILY_AE_HIDDEN = ((32, 8, 32), (64, 16, 64), (128, 32, 128))
FAMILY_TS = {"in_dim": (8, 16, 32), "width": (16, 32, 64), "depth": (1, 2), "out_dim": (1, 4, 8)}
FAMILY_MEMORIZATION = {"subset": (256, 512, 1024, 2048), "label_noise": (0.0, 0.2, 0.4),
                       "depth": (1, 2)}   # an image MLP fitting a small, partly relabelled set
FAMILY_LM = {"context": (8, 16), "embed": (16, 32), "layers": (1, 2), "batch_size": (16, 32)}


def sample_task_family(seed: int, num_tasks: int, kinds: Sequence[str] | None = None,
                       datasets: Sequence[str] | None = None) -> list[Task]:
    """Draw `num_tasks` task structures from the documented distribution (FAMILY_* above).

    Same seed → same list. `kinds` restricts the task kinds (renormalizing FAMILY_KIND_PROBS);
    `datasets` replaces FAMILY_DATASETS for the image tasks. Each Task has static shapes.
    """
    seed = _check_int("seed", seed, 0)
    num_tasks = _check_int("num_tasks", num_tasks, 1)
    kinds = list(FAMILY_KIND_PROBS) if kinds is None else list(kinds)
    for k in kinds:
        _choose("task kind", k, FAMILY_KIND_PROBS)
    datasets = list(FAMILY_DATASETS if datasets is None else datasets)
    for d in datasets:
        _choose("dataset", d, DATASETS)
    if not kinds or not datasets:
        raise InvalidOptionError("kinds and datasets must not be empty")
    probs = np.asarray([FAMILY_KIND_PROBS[k] for k in kinds])
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    family = []
    for _ in range(num_tasks):  # options are drawn left to right, so a seed fixes the list
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        if kind == "image_mlp":
            width, depth = pick(FAMILY_WIDTHS), pick(FAMILY_DEPTHS)
            task = image_mlp(pick(datasets), hidden=(width,) * depth,
                             activation=pick(FAMILY_ACTIVATIONS),
                             batch_size=pick(FAMILY_BATCH_SIZES),
                             layernorm=bool(rng.random() < FAMILY_LAYERNORM_PROB))
        elif kind == "memorization":
            f = FAMILY_MEMORIZATION
            width, depth = pick(FAMILY_WIDTHS), pick(f["depth"])
            task = image_mlp(pick(datasets), hidden=(width,) * depth,
                             activation=pick(FAMILY_ACTIVATIONS),
                             batch_size=pick(FAMILY_BATCH_SIZES), subset=pick(f["subset"]),
                             label_noise=pick(f["label_noise"]))
        elif kind == "image_conv":
            task = image_conv(pick(datasets), channels=pick(FAMILY_CONV_CHANNELS),
                              activation=pick(FAMILY_ACTIVATIONS),
                              batch_size=pick(FAMILY_BATCH_SIZES))
        elif kind == "image_autoencoder":
            task = image_autoencoder(pick(datasets), hidden=pick(FAMILY_AE_HIDDEN),
                                     batch_size=pick(FAMILY_BATCH_SIZES))
        elif kind == "teacher_student":
            width, depth = pick(FAMILY_TS["width"]), pick(FAMILY_TS["depth"])
            task = teacher_student(in_dim=pick(FAMILY_TS["in_dim"]), hidden=(width,) * depth,
                                   out_dim=pick(FAMILY_TS["out_dim"]),
                                   batch_size=pick(FAMILY_BATCH_SIZES),
                                   activation=pick(FAMILY_ACTIVATIONS),
                                   teacher_seed=int(rng.integers(2 ** 31)))
        else:
            embed = pick(FAMILY_LM["embed"])
            task = byte_lm(context=pick(FAMILY_LM["context"]), embed=embed, hidden=2 * embed,
                           layers=pick(FAMILY_LM["layers"]), heads=2,
                           batch_size=pick(FAMILY_LM["batch_size"]))
        family.append(task)
    return family

