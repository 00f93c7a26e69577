#!/usr/bin/env python3
"""Compares `hearth logits` output against a fixture's float64 transformers reference.

Pure python (no numpy): reads safetensors with struct. Usage:

    fixture_compare.py REFERENCE.safetensors PROMPT_INDEX OUT.safetensors [LABEL]
    fixture_compare.py --ids REFERENCE.safetensors PROMPT_INDEX   # prints input ids, comma-separated
    fixture_compare.py --steps REFERENCE.safetensors PROMPT_INDEX # prints the number of greedy steps

Prints one line: max rel err (max |a-b| / max |b|) of prefill logits and of greedy step logits,
and whether the greedy ids equal the reference's. Exit status 1 when the ids differ or an error
exceeds --tol (default 1e-3).
"""
import json
import struct
import sys

FORMATS = {"F32": "f", "I64": "q", "F64": "d", "I32": "i"}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        fmt = FORMATS[info["dtype"]]
        start, end = info["data_offsets"]
        count = (end - start) // struct.calcsize(fmt)
        out[name] = (list(struct.unpack("<%d%s" % (count, fmt), data[base + start : base + end])), info["shape"])
    return out


def rel_err(a, b):
    if len(a) != len(b):
        raise SystemExit("length mismatch: %d vs %d" % (len(a), len(b)))
    num = max(abs(x - y) for x, y in zip(a, b))
    den = max(abs(y) for y in b)
    return num / max(den, 1e-30)


def main(argv):
    tol = 1e-3
    if "--tol" in argv:
        i = argv.index("--tol")
        tol = float(argv[i + 1])
        del argv[i : i + 2]
    if argv[0] == "--ids":
        ref = read_safetensors(argv[1])
        print(",".join(str(x) for x in ref["prompt%s.input_ids" % argv[2]][0]))
        return 0
    if argv[0] == "--steps":
        ref = read_safetensors(argv[1])
        print(len(ref["prompt%s.greedy_ids" % argv[2]][0]))
        return 0
    ref_path, p, out_path = argv[0], argv[1], argv[2]
    label = argv[3] if len(argv) > 3 else out_path
    ref = read_safetensors(ref_path)
    got = read_safetensors(out_path)
    e_prefill = rel_err(got["logits"][0], ref["prompt%s.prefill_logits" % p][0])
    e_steps = rel_err(got["greedy_step_logits"][0], ref["prompt%s.greedy_step_logits" % p][0])
    ids_ok = got["greedy_ids"][0] == ref["prompt%s.greedy_ids" % p][0]
    ok = ids_ok and e_prefill <= tol and e_steps <= tol
    print(
        "%-28s prompt%s  prefill rel %.3e  steps rel %.3e  greedy ids %s  %s"
        % (label, p, e_prefill, e_steps, "match" if ids_ok else "DIFFER", "ok" if ok else "FAIL")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
