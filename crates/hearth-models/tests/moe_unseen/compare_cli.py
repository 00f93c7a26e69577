#!/usr/bin/env python3
"""Runs the release `hearth logits` CLI on every checkpoint next to this file and compares with
its float64 transformers reference (reference.safetensors, made by make_unseen.py).

For each prompt: prefill logits [T, vocab] (max rel err = max|a-b| / max|b|), greedy ids (exact)
and the logits of each greedy step. Prints a markdown table; exits 1 if any rel err > 1e-4 or
any greedy id differs.

usage: compare_cli.py [--hearth PATH] [--tol 1e-4] [DIR ...]
"""
import argparse, os, subprocess, sys, tempfile

import numpy as np
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "../../../.."))


def rel(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / max(np.abs(b).max(), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hearth", default=os.path.join(REPO, "target/release/hearth"))
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("dirs", nargs="*")
    a = ap.parse_args()
    dirs = a.dirs or sorted(os.path.join(HERE, d) for d in os.listdir(HERE)
                            if os.path.isfile(os.path.join(HERE, d, "config.json")))
    if not dirs:
        sys.exit(f"no checkpoints under {HERE}: run make_unseen.py first")
    ok = True
    print("| model | prompt | tokens | prefill rel err | greedy step rel err | greedy ids |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for d in dirs:
            ref = load_file(os.path.join(d, "reference.safetensors"))
            name = os.path.basename(d.rstrip("/"))
            for p in range(2):
                ids = ref[f"prompt{p}.input_ids"]
                ref_ids = ref[f"prompt{p}.greedy_ids"]
                out = os.path.join(tmp, f"{name}.{p}.safetensors")
                cmd = [a.hearth, "logits", "--model", d, "--tokens", ",".join(str(int(i)) for i in ids),
                       "--greedy", str(len(ref_ids)), "--out", out]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"| {name} | {p} | {len(ids)} | CLI FAILED: {r.stderr.strip()[-200:]} | | |")
                    ok = False
                    continue
                got = load_file(out)
                e_pre = rel(got["logits"], ref[f"prompt{p}.prefill_logits"])
                e_step = rel(got["greedy_step_logits"], ref[f"prompt{p}.greedy_step_logits"])
                same = np.array_equal(got["greedy_ids"].astype(np.int64), ref_ids.astype(np.int64))
                ok &= e_pre <= a.tol and e_step <= a.tol and same
                print(f"| {name} | {p} | {len(ids)} | {e_pre:.2e} | {e_step:.2e} | "
                      f"{'identical' if same else 'DIFFER'} ({len(ref_ids)}) |")
    print("\nall within tolerance" if ok else "\nFAILURES above", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
