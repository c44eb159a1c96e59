#!/usr/bin/env python3
"""Generates shared/pvesim/data/pve-rules.json from the official PVE API schema extracts
(../shared/pve-api/subset.json for PVE 9, subset-pve8.json for PVE 8).

Only facts are kept: method, path, and per parameter its type, optionality, enum, pattern,
bounds and format name. No descriptions. pvesim embeds the output to check every request
the way PVE does. Run from the repository root:

    python3 scripts/gen-pve-rules.py          # rewrite the file
    python3 scripts/gen-pve-rules.py --check  # exit 1 if the committed file is stale
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {"pve9": "subset.json", "pve8": "subset-pve8.json"}
FULL = {"pve9": "apidoc.js", "pve8": "apidoc-pve8.js"}
# Endpoints outside the subset that pvesim also answers, read from the full schema:
# `pvefleet pve check` reads the caller's privileges; nethotplug checks a bridge exists; the
# backups (issue 20) use vzdump, backup content, pruning and cluster backup jobs.
EXTRA = [
    ("GET", "/access/permissions"),
    ("GET", "/nodes/{node}/network"),
    ("POST", "/nodes/{node}/vzdump"),
    ("GET", "/nodes/{node}/vzdump/extractconfig"),
    ("GET", "/nodes/{node}/storage/{storage}/content/{volume}"),
    ("PUT", "/nodes/{node}/storage/{storage}/content/{volume}"),
    ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}"),
    ("GET", "/nodes/{node}/storage/{storage}/prunebackups"),
    ("DELETE", "/nodes/{node}/storage/{storage}/prunebackups"),
    ("GET", "/cluster/backup"),
    ("POST", "/cluster/backup"),
    ("GET", "/cluster/backup/{id}"),
    ("PUT", "/cluster/backup/{id}"),
    ("DELETE", "/cluster/backup/{id}"),
]
OUT = os.path.join(ROOT, "shared", "pvesim", "data", "pve-rules.json")
KEEP = ["type", "optional", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength"]
INDEX_LIMITS = {"net": 32, "mp": 256, "unused": 256, "dev": 256}


def number(v):
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return None
    return v


def param(p):
    out = {}
    for k in KEEP:
        if k in p:
            v = p[k]
            if k in ("minimum", "maximum", "minLength", "maxLength"):
                v = number(v)
                if v is None:
                    continue
            if k == "optional":
                v = bool(v)
            out[k] = v
    if isinstance(p.get("format"), str):
        out["format"] = p["format"]
    elif isinstance(p.get("format"), dict):
        out["format"] = "property-string"
    return out


def full_schema(path):
    """Endpoints of the full apidoc.js, in the subset's shape, for the EXTRA paths."""
    with open(path) as f:
        text = f.read()
    text = text[text.index("["):text.rindex("]") + 1]
    found = []

    def walk(nodes):
        for n in nodes:
            for method, info in (n.get("info") or {}).items():
                if (method, n.get("path")) in EXTRA:
                    props = (info.get("parameters") or {}).get("properties") or {}
                    params = [dict(v, name=k) for k, v in sorted(props.items())]
                    found.append({"method": method, "path": n["path"], "parameters": params})
            walk(n.get("children") or [])

    walk(json.loads(text))
    return found


def rules(path, full):
    with open(path) as f:
        data = json.load(f)
    endpoints = []
    for e in data["endpoints"] + full_schema(full):
        params = {}
        for p in e.get("parameters", []):
            name = p["name"]
            entry = param(p)
            if name.endswith("[n]"):
                base = name[:-3]
                entry["indexed"] = INDEX_LIMITS.get(base, 256)
                name = base
            params[name] = entry
        endpoints.append({"method": e["method"], "path": e["path"], "params": params})
    endpoints.sort(key=lambda x: (x["path"], x["method"]))
    return endpoints


def main():
    shared = os.path.join(ROOT, "..", "shared", "pve-api")
    out = {
        version: rules(os.path.join(shared, name), os.path.join(shared, FULL[version]))
        for version, name in SOURCES.items()
    }
    text = json.dumps(out, indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        with open(OUT) as f:
            if f.read() != text:
                print(f"{OUT} is stale: run python3 scripts/gen-pve-rules.py", file=sys.stderr)
                sys.exit(1)
        print("pve-rules.json is up to date")
        return
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {OUT}: {len(out['pve9'])} PVE 9 and {len(out['pve8'])} PVE 8 endpoints")


if __name__ == "__main__":
    main()
