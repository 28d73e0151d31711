"""convert_celo_weights.py: the published Celo meta-parameters → celo.py's θ layout.

    python convert_celo_weights.py PATH/celo_paper_theta.npz [--out checkpoints/celo_paper.npz]

Input: the released θ of Celo (Moudgil et al., TMLR 2025; github.com/amoudgl/celo, MIT) as plain
arrays keyed by their haiku paths (`ff_mod_stack/~/w0__3`, `rnn_params/rnn/linear/w`, ...).
Output: a train.py checkpoint ("celo", θ) with the MIT notice in its meta, plus the notice as
LICENSE-celo-paper.txt beside it. What the mapping does (celo.py's docstring has our layout):
  * first layer: the 14 input groups `w0__0 … w0__13` concatenated in NUMERIC order into (30, 4)
    (a string sort puts w0__10 after w0__1 and scrambles the channels);
  * `[0]` of every `ff_mod_stack` array (the param_inits = 1 stack: softmax over one control = 1);
  * dropped, because the forward pass never reads them: `rnn_params/linear` (overwritten by the
    next layer), `rnn_params/rnn_to_controls` (a softmax over one element), output column 2;
  * `rnn_params/linear_1` → mix (the ReLU branch), `linear_2` → proj, `rnn/linear` → lstm (the
    haiku layout already: rows [x'; h], gate columns i, g, f, o), `step_size` → out;
    `lstm_init_state/{hidden, cell}[0]` → h0, c0.
"""
import argparse
import hashlib
import os
import re

import jax
import numpy as np

import celo
from checkpoint import save_checkpoint

SOURCE = ("github.com/amoudgl/celo at commit 66d976116f39da286951f0c5e0a18eee8d1fd66b, "
          "algoperf/submissions/celo/theta.state (phase-2 checkpoint of class Celo, "
          "celo/optimizers/celo.py), exported to plain arrays as celo_paper_theta.npz")
COPYRIGHT = "Copyright (c) 2025 Abhinav Moudgil"
MIT_NOTICE = f"""MIT License

{COPYRIGHT}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
LICENSE_HEADER = ("The meta-parameters in celo_paper.npz are the released weights of Celo\n"
                  f"({SOURCE}),\n"
                  "converted by convert_celo_weights.py. They are under this licence:\n\n")

MLP = "ff_mod_stack/~/"
RNN = "rnn_params/"
# Parts of the published θ that the forward pass never reads (weights README "Dead parameters").
DEAD = (RNN + "linear/w", RNN + "linear/b", RNN + "rnn_to_controls/w", RNN + "rnn_to_controls/b")
DEAD_OUTPUT_COLUMNS = slice(celo.NUM_OUTPUTS, None)  # MLP output 2 (d = 0, m = 1 are kept)


def first_layer_groups(ref):
    """The keys w0__k sorted by the integer k, checked to be 0, 1, …, K−1."""
    keys = [k for k in ref if re.fullmatch(re.escape(MLP) + r"w0__\d+", k)]
    keys.sort(key=lambda k: int(k.rsplit("__", 1)[1]))
    if [int(k.rsplit("__", 1)[1]) for k in keys] != list(range(len(keys))):
        raise ValueError(f"first-layer groups are not w0__0..w0__{len(keys) - 1}: {keys}")
    return keys


def convert(ref):
    """{haiku path: array} of the published θ → our θ (nested dict of float32 numpy arrays)."""
    ref = {k: np.asarray(v, np.float32) for k, v in ref.items()}
    for k in ref:
        if k.startswith(MLP) and ref[k].shape[0] != 1:
            raise ValueError(f"{k}: expected a param_inits = 1 stack, got shape {ref[k].shape}")
    w0 = np.concatenate([ref[k][0] for k in first_layer_groups(ref)], axis=0)
    rule = {"w0": w0, "b0": ref[MLP + "b0"][0],
            "w1": ref[MLP + "w1"][0], "b1": ref[MLP + "b1"][0],
            "w2": np.delete(ref[MLP + "w2"][0], DEAD_OUTPUT_COLUMNS, axis=-1),
            "b2": np.delete(ref[MLP + "b2"][0], DEAD_OUTPUT_COLUMNS, axis=-1)}
    linear = lambda name: {"w": ref[RNN + name + "/w"], "b": ref[RNN + name + "/b"]}
    scheduler = {"mix": linear("linear_1"), "proj": linear("linear_2"),
                 "lstm": linear("rnn/linear"), "out": linear("step_size"),
                 "h0": ref["lstm_init_state/hidden"][0], "c0": ref["lstm_init_state/cell"][0]}
    theta = {"rule": rule, "scheduler": scheduler}
    check_layout(theta)
    return theta


def check_layout(theta):
    """Same tree and shapes as celo.init_meta_params (the published widths are our defaults)."""
    expect = jax.tree.map(np.shape, jax.eval_shape(celo.init_meta_params, jax.random.PRNGKey(0)))
    got = jax.tree.map(np.shape, theta)
    if got != expect:
        raise ValueError(f"converted θ has layout {got}, celo.py expects {expect}")


def dead_count(ref):
    """Numbers of the published θ that the conversion drops (1,286 for the paper's θ)."""
    return (sum(ref[k].size for k in DEAD)
            + ref[MLP + "w2"][..., DEAD_OUTPUT_COLUMNS].size
            + ref[MLP + "b2"][..., DEAD_OUTPUT_COLUMNS].size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", help="celo_paper_theta.npz (the published arrays)")
    parser.add_argument("--out", default="checkpoints/celo_paper.npz")
    args = parser.parse_args(argv)
    with np.load(args.src, allow_pickle=False) as f:
        ref = {k: f[k] for k in f.files}
    with open(args.src, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    theta = convert(ref)
    total = sum(v.size for v in ref.values())
    kept = sum(v.size for v in jax.tree.leaves(theta))
    assert kept + dead_count(ref) == total, (kept, dead_count(ref), total)
    config = {"optimizer": "celo", "use_scheduler": True, "stage": 2, "hidden": celo.HIDDEN,
              "hidden_layers": celo.HIDDEN_LAYERS, "lstm_hidden": celo.LSTM_HIDDEN}
    meta = {"source": SOURCE, "source_npz_sha256": sha, "converted_by": "convert_celo_weights.py",
            "licence": "MIT", "copyright": COPYRIGHT, "notice": MIT_NOTICE}
    save_checkpoint(args.out, "celo", theta, config=config, meta=meta)
    license_path = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                                "LICENSE-celo-paper.txt")
    with open(license_path, "w") as f:
        f.write(LICENSE_HEADER + MIT_NOTICE)
    print(f"{args.out}: {kept} numbers kept, {total - kept} dead dropped; notice in {license_path}")


if __name__ == "__main__":
    main()
