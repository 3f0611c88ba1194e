#!/usr/bin/python3
"""The module graph of dataplane/ and its dependency circles.

A module is a file pair: x.c and x.h are module x. Module a depends on
module b when a.c or a.h includes "b.h". A circle is a strongly connected
component of more than one module. The allowed circles are given with
--allow a,b (each one set of modules); any other circle, or a larger one,
fails (exit 1) and is printed with the includes that make it.

  tests/tools/deps.py dataplane --allow worker,conn
"""
import argparse
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)\.h"', re.M)


def graph(folder):
    edges, why = {}, {}
    for name in sorted(os.listdir(folder)):
        base, ext = os.path.splitext(name)
        if ext not in (".c", ".h"):
            continue
        mods = edges.setdefault(base, set())
        text = open(os.path.join(folder, name), errors="replace").read()
        for inc in INCLUDE.findall(text):
            inc = os.path.basename(inc)
            if inc != base and os.path.exists(os.path.join(folder, inc + ".h")):
                mods.add(inc)
                why.setdefault((base, inc), name)
    return edges, why


def circles(edges):
    """Tarjan's strongly connected components with more than one member."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--allow", action="append", default=[])
    args = ap.parse_args()
    edges, why = graph(args.folder)
    allowed = [set(a.split(",")) for a in args.allow]
    bad = [c for c in circles(edges) if c not in allowed]
    for c in circles(edges):
        print("circle: %s%s" % (" ".join(sorted(c)), "" if c in allowed else "  <- not allowed"))
        if c not in allowed:
            for a in sorted(c):
                for b in sorted(edges[a] & c):
                    print("    %s -> %s (%s includes %s.h)" % (a, b, why[(a, b)], b))
    print("%d modules, %d circles, %d not allowed" % (len(edges), len(circles(edges)), len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
