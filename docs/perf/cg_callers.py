#!/usr/bin/env python3
"""Who calls a function, per event: the marginal calls and inclusive
instructions of each caller between two callgrind profiles of one row at
two event counts.

    cg_callers.py SMALL.out SMALL_EVENTS LARGE.out LARGE_EVENTS FUNCTION_REGEX [--top N]
"""

import re
import subprocess
import sys

from cg_compare import pop_top

ENTRY = re.compile(r"^\s*([\d,]+)\s+([<*>])\s+(.*?)(?:\s+\(([\d,]+)x\))?(?:\s+\[[^\]]*\])?\s*$")


def strip_file(name):
    file, sep, fn = name.partition(":")
    if sep and ("/" in file or file.endswith((".rs", ".c", ".S")) or file == "???"):
        return fn
    return name


def callers(path, pattern):
    out = subprocess.run(
        ["callgrind_annotate", "--tree=caller", "--auto=no", "--show-percs=no",
         "--threshold=100", path], check=True, capture_output=True, text=True).stdout
    result = {}
    block = []
    for line in out.splitlines():
        m = ENTRY.match(line)
        if not m:
            block = []
            continue
        cost, kind, name, calls = m.groups()
        name = strip_file(name)
        if kind == "<":
            block.append((name, int(cost.replace(",", "")), int((calls or "0").replace(",", ""))))
        elif kind == "*":
            if pattern.search(name):
                for caller, c, n in block:
                    cur = result.setdefault((name, caller), [0, 0])
                    cur[0] += c
                    cur[1] += n
            block = []
    return result


def main():
    args = sys.argv[1:]
    top = pop_top(args, 30)
    small, n1, large, n2, rx = args[0], int(args[1]), args[2], int(args[3]), re.compile(args[4])
    a, b = callers(small, rx), callers(large, rx)
    events = n2 - n1
    rows = []
    for key in set(a) | set(b):
        c = (b.get(key, [0, 0])[0] - a.get(key, [0, 0])[0]) / events
        n = (b.get(key, [0, 0])[1] - a.get(key, [0, 0])[1]) / events
        rows.append((c, n, key))
    rows.sort(key=lambda r: -r[0])
    total_c = sum(r[0] for r in rows)
    total_n = sum(r[1] for r in rows)
    print(f"all callers: {total_c:,.0f} instructions/event, {total_n:.2f} calls/event")
    for c, n, (fn, caller) in rows[:top]:
        print(f"  {c:>9,.0f}  {n:>6.2f} calls  {fn[:40]:<40} <- {caller[:150]}")


if __name__ == "__main__":
    main()
