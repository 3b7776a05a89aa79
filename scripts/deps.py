#!/usr/bin/env python3
"""The file-level import graph of src/ (the library): which file names which through `crate::`
paths (in `use` lines and inline), `super::` and child `mod` declarations excluded. Prints the
strongly connected components with more than one file (dependency circles), or "no circle".

    python3 scripts/deps.py [--edges]
"""
import os, re, sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# The layers of src/, lowest first (ARCHITECTURE.md "Layers"): a path is a file, or a folder
# ending in "/".
LAYERS = [
    # Ground: configuration, errors, metrics, limits, XML, and the pure BOSH pieces.
    ["lib.rs", "config.rs", "error.rs", "metrics/", "shutdown.rs", "limits.rs", "relay.rs", "xml/",
     "bosh/mod.rs", "bosh/body.rs", "bosh/body/", "bosh/http/", "bosh/window.rs", "bosh/core.rs", "bosh/core/",
     "bosh/exchange.rs", "bosh/registry.rs",
     "front/client_ip.rs", "front/tls.rs"],
    # The upstream stream and the cluster's sids and hop; the configuration in force.
    ["upstream/", "link.rs", "cluster/", "live.rs"],
    # What every transport shares.
    ["state.rs"],
    # Transports and the handlers of the public listeners; reload; the check command.
    ["bosh/session.rs", "bosh/http.rs", "websocket/", "passthrough.rs", "polling/", "hostmeta.rs", "front_page.rs",
     "reload.rs", "check/"],
    # The edge: accepting connections, TLS, choosing HTTP or passthrough; the admin listener.
    ["front/mod.rs", "front/h1.rs", "admin.rs"],
    # Composition: routers, listeners, drain.
    ["server.rs"],
]

def module_files():
    files = {}
    for dp, _, fs in os.walk(ROOT):
        for f in fs:
            if not f.endswith(".rs") or dp.startswith(os.path.join(ROOT, "bin")):
                continue
            rel = os.path.relpath(os.path.join(dp, f), ROOT)
            if rel in ("main.rs",):
                continue
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts == ["lib"]:
                parts = []
            files[tuple(parts)] = rel
    return files

def strip_tests(text):
    # Leave out `#[cfg(test)] mod tests { ... }` blocks: tests may reach anywhere.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)

def main():
    files = module_files()
    texts = {}
    for mod, rel in files.items():
        t = strip_tests(open(os.path.join(ROOT, rel)).read())
        texts[mod] = re.sub(r"//[^\n]*", "", t)
    # Re-exports (`pub use sub::Name;`, `pub use sub::{A, B};`): a path through them names the
    # file that defines the item.
    reexports = {}
    for mod, t in texts.items():
        for m in re.finditer(r"pub use (\w+)::(\{[^}]*\}|\w+)", t):
            sub = mod + (m.group(1),)
            if sub not in files:
                continue
            for name in re.findall(r"\w+", m.group(2)):
                reexports[mod + (name,)] = sub
    def resolve(segs):
        for n in range(len(segs), 0, -1):
            key = tuple(segs[:n])
            if key in reexports:
                return reexports[key]
            if key in files:
                if n < len(segs) and key + (segs[n],) in reexports:
                    return reexports[key + (segs[n],)]
                return key
        return None
    edges = defaultdict(set)
    for mod, rel in files.items():
        if os.path.basename(rel) == "tests.rs" or rel.endswith("_tests.rs"):
            continue
        text = texts[mod]
        paths = [m.group(1).split("::") for m in re.finditer(r"crate::((?:\w+::)*\w+)", text)]
        for g in re.finditer(r"use crate::\{([^}]*)\}", text):
            paths += [item.strip().split("::") for item in re.split(r",\s*", g.group(1)) if item.strip()]
        # `super::x` from a file: relative to its parent module (mod.rs files are their module).
        parent = mod if rel.endswith("mod.rs") or rel == "lib.rs" else mod[:-1]
        for m in re.finditer(r"(?<![\w:])super::((?:\w+::)*\w+)", text):
            paths.append(list(parent[:-1]) + m.group(1).split("::") if rel.endswith("mod.rs") else list(parent) + m.group(1).split("::"))
        for segs in paths:
            target = resolve(segs)
            if target is not None and target != mod and target != ():
                edges[mod].add(target)
    # Tarjan's SCC.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            sccs.append(comp)
    sys.setrecursionlimit(10000)
    for v in files:
        if v not in index:
            strong(v)
    name = lambda m: files[m]
    if "--edges" in sys.argv:
        for a in sorted(edges, key=name):
            print(f"{name(a)} -> {', '.join(sorted(name(b) for b in edges[a]))}")
    # Layers, lowest first; a file may import its own layer or lower ones only.
    upward = []
    def layer(rel):
        for n, globs in enumerate(LAYERS):
            if any(rel == g or (g.endswith("/") and rel.startswith(g)) for g in globs):
                return n
        return None
    is_test = lambda rel: os.path.basename(rel) == "tests.rs" or rel.endswith("_tests.rs")
    unlayered = sorted(rel for rel in files.values() if layer(rel) is None and not is_test(rel))
    for a, bs in edges.items():
        for b in bs:
            la, lb = layer(name(a)), layer(name(b))
            if la is not None and lb is not None and lb > la:
                upward.append((name(a), name(b)))
    for a, b in sorted(upward):
        print(f"upward: {a} (layer {layer(a)}) -> {b} (layer {layer(b)})")
    for rel in unlayered:
        print(f"no layer: {rel}")
    circles = [c for c in sccs if len(c) > 1]
    if not circles:
        print("no circle")
        return 1 if upward or unlayered else 0
    for c in circles:
        print(f"circle of {len(c)} files: {' '.join(sorted(name(m) for m in c))}")
        inside = set(c)
        for a in sorted(c, key=name):
            for b in sorted(edges[a] & inside, key=name):
                print(f"  {name(a)} -> {name(b)}")
    return 1

sys.exit(main())
