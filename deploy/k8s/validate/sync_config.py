#!/usr/bin/env python3
"""Copies deploy/mesh/broker.toml and acl.toml into the ConfigMap
deploy/k8s/broker-config.yaml, byte for byte (validate.sh fails when they
drift). Run it after editing either file."""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parents[3]
cm = root / "deploy/k8s/broker-config.yaml"
text = cm.read_text()
for name in ("broker.toml", "acl.toml"):
    body = (root / "deploy/mesh" / name).read_text()
    # Indented four spaces under the key; blank lines stay empty.
    block = "".join("    " + line if line.strip() else "\n" for line in body.splitlines(keepends=True))
    # The block runs from "  <name>: |" to the next "  <key>:" at two spaces, or the end.
    pattern = re.compile(r"(  " + re.escape(name) + r": \|\n)(.*?)(?=^  \S|\Z)", re.S | re.M)
    text, n = pattern.subn(lambda m: m.group(1) + block, text, count=1)
    assert n == 1, f"no {name} block in {cm}"
cm.write_text(text)
print(f"updated {cm.relative_to(root)}")
