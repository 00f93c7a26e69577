#!/usr/bin/env python3
"""Compares `hearth logits` output against a fixture's float64 transformers reference.

Pure python (no numpy): reads safetensors with struct. Usage:

    fixture_compare.py REFERENCE.safetensors PROMPT_INDEX OUT.safetensors [LABEL]
    fixture_compare.py --ids REFERENCE.safetensors PROMPT_INDEX   # prints input ids, comma-separated
    fixture_compare.py --steps REFERENCE.safetensors PROMPT_INDEX # prints the number of greedy steps
    fixture_compare.py --tol T --ids-prefix N REFERENCE PROMPT_INDEX OUT [LABEL]  # bf16: the
        first N greedy ids equal, logits within T at prefill and at every step before the first
        differing id

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


def compare_prefix(ref_path, p, out_path, label, tol, prefix):
    """Reduced-precision check: the first `prefix` greedy ids must match; logits are compared
    at prefill and at every step up to the first differing id (later steps see other inputs)."""
    ref = read_safetensors(ref_path)
    got = read_safetensors(out_path)
    gids, rids = got["greedy_ids"][0], ref["prompt%s.greedy_ids" % p][0]
    same = 0
    while same < min(len(gids), len(rids)) and gids[same] == rids[same]:
        same += 1
    e_prefill = rel_err(got["logits"][0], ref["prompt%s.prefill_logits" % p][0])
    g, r = got["greedy_step_logits"][0], ref["prompt%s.greedy_step_logits" % p][0]
    steps = len(rids)
    vocab = len(r) // steps
    # step i's logits were computed from ids[..i], all equal while i <= same
    n = min(steps, same + 1)
    e_steps = max(rel_err(g[i * vocab : (i + 1) * vocab], r[i * vocab : (i + 1) * vocab]) for i in range(n))
    ok = same >= min(prefix, steps) and e_prefill <= tol and e_steps <= tol
    print(
        "%-28s prompt%s  prefill rel %.3e  steps rel %.3e (first %d steps)  ids equal for %d/%d steps  %s"
        % (label, p, e_prefill, e_steps, n, same, steps, "ok" if ok else "FAIL")
    )
    return 0 if ok else 1


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
    prefix = None
    if "--ids-prefix" in argv:
        i = argv.index("--ids-prefix")
        prefix = int(argv[i + 1])
        del argv[i : i + 2]
    ref_path, p, out_path = argv[0], argv[1], argv[2]
    if prefix is not None:
        return compare_prefix(ref_path, p, out_path, argv[3] if len(argv) > 3 else out_path, tol, prefix)
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
