#!/usr/bin/env python3
"""Checks that the library's imports follow the pipeline (ARCHITECTURE.md): each top-level
module of src/ may use only the modules listed before it in LAYERS, so there is no import
cycle and no arrow from a lower layer up to the workers or the codec. Test modules
(`#[cfg(test)]` onward) are not checked."""
import os
import re
import sys

LAYERS = [
    # the vocabulary and the process's plumbing, used everywhere
    "clock", "answer", "window", "id_set", "report", "trace", "rate_limit", "health", "logs", "config",
    "systemd", "shutdown", "metrics", "wal",
    # the pipeline, bottom up
    "http", "ingest", "sinks", "recorder", "worker",
    # start-up wiring
    "service",
]

USE = re.compile(r"crate::(?:\{([^}]*)\}|([a-z_]+))")

def main():
    rank = {name: i for i, name in enumerate(LAYERS)}
    errors = []
    for root, _, files in os.walk("src"):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".rs") or path.startswith("src/bin/"):
                continue
            module = path[len("src/"):-len(".rs")].split("/")[0]
            if module in ("lib", "main"):
                continue
            if module not in rank:
                errors.append(f"{path}: module {module} is not in LAYERS")
                continue
            source = open(path).read().split("#[cfg(test)]")[0]
            for match in USE.finditer(source):
                names = match.group(2) or match.group(1)
                for used in re.findall(r"(?:^|,)\s*([a-z_]+)", names):
                    if used == module:
                        continue
                    if used not in rank:
                        errors.append(f"{path}: uses crate::{used}, which is not in LAYERS")
                    elif rank[used] > rank[module]:
                        errors.append(f"{path}: {module} uses {used}, a layer above it")
    for error in sorted(set(errors)):
        print(error, file=sys.stderr)
    return 1 if errors else 0

if __name__ == "__main__":
    sys.exit(main())
