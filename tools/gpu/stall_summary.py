#!/usr/bin/env python3
"""Where a profiled kernel's warps wait: reads the profile.tar.gz of tools/gpu/profile.sh (or its
sass.csv) and prints the stall reasons over the whole kernel, then the instructions with the most
stall samples, each with its two largest reasons.

    tools/gpu/stall_summary.py OUT/profile.tar.gz [--top 40]
"""
import argparse
import csv
import io
import tarfile


def read_rows(path):
    if path.endswith(".csv"):
        text = open(path, encoding="utf-8").read()
    else:
        with tarfile.open(path) as tar:
            text = tar.extractfile("sass.csv").read().decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    # row 0 names the kernel, row 1 is the header
    return rows[0], rows[1], rows[2:]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    kernel, hdr, data = read_rows(a.profile)
    col = {h: i for i, h in enumerate(hdr)}
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    samples = col["Warp Stall Sampling (All Samples)"]

    def num(r, c):
        return int(r[c] or 0)

    total = sum(num(r, samples) for r in data)
    print(" ".join(kernel)[:200])
    print(f"stall samples: {total}")
    sums = {s: sum(num(r, col[s]) for r in data) for s in stalls}
    for s, v in sorted(sums.items(), key=lambda x: -x[1]):
        if v:
            print(f"  {s:26s} {v:9d} {100.0 * v / max(total, 1):5.1f}%")
    print()
    data.sort(key=lambda r: -num(r, samples))
    for r in data[: a.top]:
        top = sorted(((num(r, col[s]), s[6:]) for s in stalls), reverse=True)[:2]
        why = ", ".join(f"{n} {s}" for n, s in top if n)
        source = r[col["Source"]].strip()[:58]
        print(f"{r[col['Address']][-5:]} {num(r, samples):8d}  {source:58s} {why}")


if __name__ == "__main__":
    main()
