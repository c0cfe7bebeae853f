#!/usr/bin/env python3
"""Runs every test binary of the workspace one after another, timing each.

`tests/run.sh` builds the test binaries with
`cargo test --workspace --no-run --message-format=json` and hands that JSON (a file) to this
script. Each binary runs from its package's directory, as `cargo test` runs it; every target
runs even when an earlier one failed, and the end of the output is a table of the targets by
wall time, so the slow ones are named in every CI log. The exit status is 1 when any failed.

Extra arguments after the JSON file go to every test binary (e.g. `--test-threads 1`).
"""

import json
import os
import subprocess
import sys
import time


def binaries(path):
    """(label, executable, package directory) of each test binary cargo built."""
    seen = set()
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if msg.get("reason") != "compiler-artifact":
                continue
            exe = msg.get("executable")
            if not exe or not msg.get("profile", {}).get("test"):
                continue
            if exe in seen:
                continue
            seen.add(exe)
            target = msg["target"]
            package = msg["package_id"]
            # package_id looks like `path+file:///work/main/engine#streamdit@0.1.0`
            # (or the older `streamdit 0.1.0 (path+file:///...)`).
            name = package.split("#")[-1].split("@")[0] if "#" in package else package.split()[0]
            kind = target["kind"][0]
            label = f"{name} {kind} {target['name']}" if kind != "lib" else f"{name} lib"
            cwd = os.path.dirname(msg["manifest_path"])
            out.append((label, exe, cwd))
    return out


def main():
    if len(sys.argv) < 2:
        print("usage: run_targets.py CARGO_JSON [ARGS FOR EVERY TEST BINARY]", file=sys.stderr)
        return 2
    targets = binaries(sys.argv[1])
    if not targets:
        print(f"no test binaries found in {sys.argv[1]}", file=sys.stderr)
        return 2
    extra = sys.argv[2:]
    results = []
    start_all = time.monotonic()
    for label, exe, cwd in targets:
        print(f"\n== {label}", flush=True)
        start = time.monotonic()
        rc = subprocess.call([exe, *extra], cwd=cwd)
        results.append((time.monotonic() - start, label, rc))
    total = time.monotonic() - start_all
    print("\n== time per test target (wall seconds, slowest first)")
    for secs, label, rc in sorted(results, reverse=True):
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"{secs:8.1f}  {label}  {status}")
    print(f"{total:8.1f}  all {len(results)} targets")
    full = os.environ.get("STREAMDIT_FULL") == "1"
    print("tier: " + ("full (STREAMDIT_FULL=1)" if full else "default (STREAMDIT_FULL=1 adds the slow cases)"))
    failed = [label for _, label, rc in results if rc != 0]
    if failed:
        print("failed targets: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
