#!/usr/bin/env python3
"""Checks the shape of the code: no module cycles inside a crate, and no
file under a `src/` over 500 lines unless it says why.

Files: a `src/` file longer than MAX_LINES fails unless one of its first
30 lines contains "longer than 500 lines because".

Cycles:

A module is a file under a crate's src/ (foo.rs and foo/mod.rs are module
`foo`; foo/bar.rs is `foo::bar`, counted as part of top-level module `foo`).
Module A depends on B when A's file names `crate::B` (in a `use` or a path),
or `super::B` from a submodule. Cycles are reported between top-level modules
of a crate, since that is where a reader gets lost; submodules of one
top-level module may refer to each other. Exits 1 if any cycle is found.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)


def crates():
    for toml in ROOT.glob("**/Cargo.toml"):
        if "target" in toml.parts or toml.parent == ROOT:
            continue
        src = toml.parent / "src"
        if src.is_dir():
            yield toml.parent, src


def top_module(src, path):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "bin":
        return None  # binaries are their own crates
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts[0] if parts else None


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def uses(text):
    """Top-level module names this file refers to via crate::."""
    names = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
    # `use crate::{a, b::c, d::{..}}`
    for group in re.findall(r"\buse\s+crate::\{(.*?)\};", text, flags=re.S):
        depth = 0
        item = ""
        for ch in group:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                names.add(item.strip().split("::")[0])
                item = ""
                continue
            if depth == 0:
                item += ch
        if item.strip():
            names.add(item.strip().split("::")[0])
    return {n for n in names if re.fullmatch(r"[a-z_][a-z0-9_]*", n)}


def cycles(graph):
    found, index, low, stack, on = [], {}, {}, [], set()
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


MAX_LINES = 500


def long_files():
    bad = 0
    for path in sorted(ROOT.glob("**/src/**/*.rs")):
        if "target" in path.relative_to(ROOT).parts:
            continue
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(
            "longer than 500 lines because" in l for l in lines[:30]
        ):
            bad += 1
            print(f"{path.relative_to(ROOT)}: {len(lines)} lines (over {MAX_LINES}, no reason given)")
    return bad


def main():
    bad = long_files()
    for crate, src in sorted(crates()):
        graph = {}
        for path in src.rglob("*.rs"):
            m = top_module(src, path)
            if m is None or m in ("lib", "main"):
                continue
            deps = uses(strip_comments(path.read_text())) - {m, "self", "super"}
            graph.setdefault(m, set()).update(d for d in deps)
        mods = set(graph)
        graph = {k: {d for d in v if d in mods} for k, v in graph.items()}
        for comp in cycles(graph):
            bad += 1
            print(f"{crate.relative_to(ROOT)}: cycle among {', '.join(comp)}")
    if bad:
        sys.exit(1)
    print(f"no module cycles, no src file over {MAX_LINES} lines")


if __name__ == "__main__":
    main()
