"""suite.py: the held-out VALIDATION and TEST suites that evaluate.py scores optimizers on.

CPU-sized analogues of Celo (arXiv 2501.12670) §5.3 and App. A.5, none in the meta-training
family (task_families.py). VALIDATION chooses recipes and checkpoints; TEST is only reported; the
two share no (dataset, architecture) pair (task_signature, test-checked). Also here: the problem
families of the README's generalization table, the QUICK subset, and `--tasks` names → tasks.
"""
from __future__ import annotations

import functools
import inspect
from typing import NamedTuple, Sequence

import numpy as np

import tasks as tasks_lib

LONG_HORIZON = 5           # the long-horizon task trains 5× the base horizon (5000 steps)


class EvaluateError(Exception):
    """A bad name, option or checkpoint; the CLI prints `error: <message>` and exits 2."""


# ----------------------------------------------------------------------------------------------
# The held-out suites: CPU-sized analogues of Celo §5.3, none in the meta-training family
# (task_families.celo_meta_training_tasks is MLP 64→32→10, batch 64, and
# task_families.sample_task_family draws uniform widths {16,32,64,128}, depths 1–3, activations
# relu/tanh/gelu/sigmoid/elu, batch sizes {32,64,128}, convs with 3×3 kernels, AEs
# (32,8,32)/(64,16,64)/(128,32,128), 2-head LMs with hidden = 2·embed, teacher–student with
# in_dim ≤ 32, width ≤ 64, depth ≤ 2 and no noise, and "memorization" MLPs of those widths, depth
# ≤ 2, fitting 256–2048 images with 0–40% of their labels drawn at random).
# Every task below differs from that support in at least one structural option (test-checked).
# VALIDATION chooses recipes and checkpoints; TEST is only reported. No (dataset, architecture)
# signature is in both (test-checked), so a choice made on VALIDATION meets new data or a new
# architecture on TEST.
# ----------------------------------------------------------------------------------------------
class SuiteTask(NamedTuple):
    builder: str          # a tasks.py builder
    kwargs: dict          # its options
    horizon: int          # steps = horizon × the base steps
    about: str            # what it tests, one line

    def build(self) -> tasks_lib.Task:
        return getattr(tasks_lib, self.builder)(**self.kwargs)


F8, F16 = "fashion_mnist_8x8", "fashion_mnist_16x16"
F8I, F8C5 = "fashion_mnist_8x8_inverted", "fashion_mnist_8x8_5class"
TEST: dict[str, SuiteTask] = {
    "fmnist8_mlp_w1024": SuiteTask("image_mlp", dict(dataset=F8, hidden=(1024,), batch_size=64),
                                   1, "32× wider than meta-training (64→1024→10, ReLU)"),
    "fmnist8_mlp_5x64_ln": SuiteTask("image_mlp", dict(dataset=F8, hidden=(64,) * 5,
                                                       layernorm=True, batch_size=64),
                                     1, "deeper: 5 hidden layers of 64 with layer norm"),
    "fmnist16_mlp_3x128_silu": SuiteTask("image_mlp", dict(dataset=F16, hidden=(128,) * 3,
                                                           activation="silu", batch_size=64),
                                         1, "3×128 MLP, SiLU (unseen activation), 16×16 input"),
    "fmnist8_mlp_w512_bs16": SuiteTask("image_mlp", dict(dataset=F8, hidden=(512,),
                                                         batch_size=16),
                                       1, "512-wide, batch 16 (noisy gradients)"),
    "fmnist8_mlp_2x128_tanh_bs256": SuiteTask("image_mlp", dict(dataset=F8, hidden=(128, 128),
                                                                activation="tanh",
                                                                batch_size=256),
                                              1, "2×128 tanh MLP, batch 256"),
    "fmnist8_mlp_96x48_long": SuiteTask("image_mlp", dict(dataset=F8, hidden=(96, 48),
                                                          batch_size=64),
                                        LONG_HORIZON, f"{LONG_HORIZON}× the base horizon, "
                                        "tapered MLP 96→48"),
    "fmnist8_conv_k5_8x16": SuiteTask("image_conv", dict(dataset=F8, channels=(8, 16),
                                                         kernel=5, batch_size=32),
                                      1, "conv net, 5×5 kernels (the family's are 3×3)"),
    "fmnist8_ae_256x64x256": SuiteTask("image_autoencoder", dict(dataset=F8,
                                                                 hidden=(256, 64, 256),
                                                                 batch_size=64),
                                       1, "MLP autoencoder, MSE on pixels"),
    "devil_lm_2l_4h": SuiteTask("byte_lm", dict(context=8, embed=16, hidden=64, layers=2,
                                                heads=4, batch_size=16),
                                1, "byte-level transformer LM, 2 layers, 4 heads, MLP 4×"),
    "teacher_student_wide": SuiteTask("teacher_student", dict(in_dim=64, hidden=(128, 128),
                                                              out_dim=8, batch_size=128,
                                                              activation="silu", noise=0.1),
                                      1, "regression, 64→128→128→8 SiLU, label noise 0.1"),
    "teacher_student_deep": SuiteTask("teacher_student", dict(in_dim=16, hidden=(32,) * 6,
                                                              out_dim=4, batch_size=64,
                                                              activation="tanh", noise=0.1),
                                      1, "regression, 6 tanh layers of 32, label noise 0.1"),
    "quadratic_d256_k1e4": SuiteTask("quadratic", dict(dim=256, condition=1e4, noise=0.1),
                                     1, "noisy quadratic (no network), condition number 1e4"),
    # problems a general-purpose optimizer must handle: a zero start, a deep plain ReLU net
    "linreg_d32_zero": SuiteTask("linear_regression", dict(in_dim=32, out_dim=1, batch_size=64,
                                                           noise=0.1),
                                 1, "least squares 32→1 from all-zero weights and bias"),
    "fmnist8_logreg_zero": SuiteTask("logistic_regression", dict(dataset=F8, batch_size=128),
                                     1, "multinomial logistic regression from all-zero w, b"),
    "fmnist16_mlp_w2048_sub1024_noisy": SuiteTask("image_mlp", dict(dataset=F16, hidden=(2048,),
                                                                    batch_size=128, subset=1024,
                                                                    label_noise=0.3),
                                                  1, "memorization: 256→2048→10 fitting 1024 "
                                                  "images, 30% of them relabelled at random"),
    "fmnist16_mlp_6x64_relu": SuiteTask("image_mlp", dict(dataset=F16, hidden=(64,) * 6,
                                                          activation="relu", batch_size=64),
                                        1, "deep plain ReLU MLP, 6×64, no normalization; "
                                        "biases start at zero (the dense init's)"),
}
VALIDATION: dict[str, SuiteTask] = {
    "fmnist8inv_mlp_2x48_silu": SuiteTask("image_mlp", dict(dataset=F8I, hidden=(48, 48),
                                                            activation="silu", batch_size=64),
                                          1, "2×48 SiLU MLP on inverted 8×8 images"),
    "fmnist8c5_mlp_w256_ln_bs32": SuiteTask("image_mlp", dict(dataset=F8C5, hidden=(256,),
                                                              layernorm=True, batch_size=32),
                                            1, "256-wide MLP with layer norm, 5 classes"),
    "fmnist8c5_logreg_zero": SuiteTask("logistic_regression", dict(dataset=F8C5, batch_size=32),
                                       1, "logistic regression from all-zero w, b, 5 classes"),
    "fmnist16_conv_12x24_bs48": SuiteTask("image_conv", dict(dataset=F16, channels=(12, 24),
                                                             kernel=3, batch_size=48),
                                          1, "conv net on 16×16 images (TEST's is on 8×8)"),
    "fmnist8inv_ae_96x24x96": SuiteTask("image_autoencoder", dict(dataset=F8I,
                                                                  hidden=(96, 24, 96),
                                                                  batch_size=64),
                                        1, "MLP autoencoder on inverted 8×8 images"),
    "teacher_student_tw128": SuiteTask("teacher_student", dict(in_dim=24, hidden=(96, 96),
                                                               out_dim=2, batch_size=96,
                                                               activation="gelu", noise=0.05,
                                                               teacher_width=128),
                                       1, "regression onto a 24→128→2 teacher, GELU student"),
    "quadratic_d64_k1e3": SuiteTask("quadratic", dict(dim=64, condition=1e3, noise=0.3, seed=1),
                                    1, "noisy quadratic, 64 dims, condition number 1e3"),
    "fmnist8inv_mlp_64x32_long": SuiteTask("image_mlp", dict(dataset=F8I, hidden=(64, 32),
                                                             batch_size=64),
                                           LONG_HORIZON, f"{LONG_HORIZON}× the base horizon, "
                                           "MLP 64→32 on inverted 8×8 images"),
    "fmnist8c5_mlp_w1024_sub1024_noisy": SuiteTask("image_mlp", dict(dataset=F8C5, hidden=(1024,),
                                                                     batch_size=64, subset=1024,
                                                                     label_noise=0.3),
                                                   1, "memorization: 64→1024→5 fitting 1024 "
                                                   "images, 30% of them relabelled at random"),
    "devil_reversed_lm_ctx24": SuiteTask("byte_lm", dict(context=24, embed=24, hidden=96,
                                                         layers=1, heads=2, batch_size=24,
                                                         reverse=True),
                                         1, "byte LM on the text read backwards, 1 layer"),
}
HELD_OUT = {**VALIDATION, **TEST}  # names are unique across the two (test-checked)
# Problem families of the README's generalization table: by builder; a run longer than the base
# horizon is "long horizon" whatever it trains.
FAMILIES = {"image_mlp": "MLP classifier", "image_conv": "conv net", "byte_lm": "language model",
            "image_autoencoder": "autoencoder", "teacher_student": "regression",
            "linear_regression": "linear model, zero start",
            "logistic_regression": "linear model, zero start", "quadratic": "quadratic"}


def family(name: str) -> str:
    entry = HELD_OUT[name]
    if entry.horizon > 1:
        return "long horizon"
    return "memorization" if entry.kwargs.get("subset") else FAMILIES[entry.builder]


def family_scores(result: dict) -> dict[str, dict]:
    """{family: {"tasks": n, "median": median task score, "min", "max"}} of an evaluation's
    held-out tasks (others are left out)."""
    by: dict[str, list] = {}
    for name, e in result["tasks"].items():
        if name in HELD_OUT and e["score"] is not None:
            by.setdefault(family(name), []).append(e["score"])
    return {f: {"tasks": len(v), "median": float(np.median(v)), "min": float(min(v)),
                "max": float(max(v))} for f, v in by.items()}


# a representative handful that compiles fast (a learned optimizer's compile time grows with the
# number of tensors: the LM's ~30 tensors take minutes on 2 cores, so it is only in "all")
QUICK = ("fmnist8_mlp_2x128_tanh_bs256", "fmnist8_ae_256x64x256", "teacher_student_wide",
         "quadratic_d256_k1e4")  # classification, autoencoder, regression, ill-conditioning


ARCHITECTURES = {"image_mlp": "mlp", "teacher_student": "mlp", "image_conv": "conv",
                 "image_autoencoder": "autoencoder", "byte_lm": "transformer",
                 "quadratic": "quadratic", "linear_regression": "linear",
                 "logistic_regression": "linear"}   # builder → architecture kind


def task_signature(entry: SuiteTask) -> tuple[str, str]:
    """(dataset, architecture kind) of a suite task, from its builder and options. The dataset is
    an image dataset's name, "devil" or "devil_reversed" for text, and for a synthetic generator
    the structure that fixes its distribution (teacher in×width×out, linear map in×out, quadratic
    dimension and condition number), not its seed or noise level."""
    k = {name: p.default for name, p in
         inspect.signature(getattr(tasks_lib, entry.builder)).parameters.items()}
    k.update(entry.kwargs)
    if "dataset" in k:
        data = k["dataset"]
    elif entry.builder == "byte_lm":
        data = "devil_reversed" if k["reverse"] else "devil"
    elif entry.builder == "teacher_student":
        data = f"synthetic_teacher_{k['in_dim']}x{k['teacher_width']}x{k['out_dim']}"
    elif entry.builder == "linear_regression":
        data = f"synthetic_linear_{k['in_dim']}x{k['out_dim']}"
    elif entry.builder == "quadratic":
        data = f"synthetic_quadratic_d{k['dim']}_k{k['condition']:g}"
    else:
        raise EvaluateError(f"no signature for builder {entry.builder!r}")
    return data, ARCHITECTURES[entry.builder]


@functools.lru_cache(maxsize=None)
def suite_task(name: str) -> tuple[tasks_lib.Task, int]:
    """(Task, horizon factor) of a held-out task, or of a tasks.TASKS entry (factor 1). Built
    once per process, so repeated evaluations reuse the compiled training runs."""
    if name in HELD_OUT:
        return HELD_OUT[name].build()._replace(name=name), HELD_OUT[name].horizon
    if name in tasks_lib.TASKS:
        return tasks_lib.get_task(name), 1
    raise EvaluateError(f"unknown task {name!r}; valid: all, quick, validation, test, "
                        f"{', '.join(HELD_OUT)} (or a tasks.TASKS name: "
                        f"{', '.join(tasks_lib.TASKS)})")


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """'validation' | 'test' (= 'all') | 'quick' | 'a,b' (or a list; the suite names expand) →
    validated task names."""
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    suites = {"all": list(TEST), "test": list(TEST), "validation": list(VALIDATION),
              "quick": list(QUICK)}
    names: list[str] = []
    for n in spec:
        names += [e for e in suites.get(n, [n]) if e not in names]
    if not names:
        raise EvaluateError("no task given; valid: all, quick, validation, test, "
                            + ", ".join(HELD_OUT))
    for n in names:
        if n not in HELD_OUT and n not in tasks_lib.TASKS:
            suite_task(n)  # raises the one-line error listing valid names
    return names
