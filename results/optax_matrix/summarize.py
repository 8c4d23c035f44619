"""Tables of optax's test matrix from per-optimizer junit files.

Usage (from the repository root)::

    PYTHONPATH=. python results/optax_matrix/summarize.py DIR [DIR ...]

reads ``DIR/<optimizer>.xml`` (a later DIR overrides an earlier one per test
case) and prints the per-optax-test and per-optimizer Markdown tables of
``full.md``. A case is *excluded* when
``tests/conformance/test_optax_suite.exclusion`` gives a reason (its outcome is
then a skip, or the asserted complex refusal), *passed* when it ran and passed,
*failed* otherwise; cases with no record are *not run*.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import xml.etree.ElementTree as ET

from tests.conformance import test_optax_suite as suite


def outcomes(dirs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in dirs:
        for f in sorted(glob.glob(os.path.join(d, "*.xml"))):
            for tc in ET.parse(f).getroot().iter("testcase"):
                m = re.fullmatch(r"test_optax_matrix\[(.*)\]", tc.get("name", ""))
                if not m:
                    continue
                if tc.find("failure") is not None or tc.find("error") is not None:
                    out[m.group(1)] = "failed"
                elif tc.find("skipped") is not None:
                    out[m.group(1)] = "skipped"
                else:
                    out[m.group(1)] = "passed"
    return out


def main(dirs: list[str]) -> None:
    got = outcomes(dirs)
    by_test: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_opt: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failed = []
    for name, test, params, cid in suite.ALL_CASES:
        key = f"{name}-{cid}"
        outcome = got.get(key)
        if outcome is None:
            kind = "not run"
        elif suite.exclusion(name, test, params) is not None:
            kind = "excluded" if outcome != "failed" else "failed"
        elif outcome == "passed":
            kind = "passed"
        else:
            kind = "failed"
        if kind == "failed":
            failed.append(key)
        by_test[f"{test.suite}.{test.name}"][kind] += 1
        by_opt[name][kind] += 1
    cols = ("passed", "excluded", "failed", "not run")
    for title, table in (("optax test", by_test), ("optimizer", by_opt)):
        print(f"| {title} | " + " | ".join(cols) + " | cases |")
        print("| --- | " + " | ".join("---:" for _ in cols) + " | ---: |")
        total: collections.Counter = collections.Counter()
        for k, c in table.items():
            total.update(c)
            print(f"| `{k}` | " + " | ".join(str(c[x]) for x in cols) + f" | {sum(c.values())} |")
        print(
            "| **total** | "
            + " | ".join(f"**{total[x]}**" for x in cols)
            + f" | **{sum(total.values())}** |"
        )
        print()
    reasons: collections.Counter = collections.Counter()
    owners: dict[str, set[str]] = collections.defaultdict(set)
    for name, test, params, _ in suite.ALL_CASES:
        reason = suite.exclusion(name, test, params)
        if reason is not None:
            reasons[reason] += 1
            owners[reason].add(name)
    print("| excluded cases | optimizers | reason |")
    print("| ---: | --- | --- |")
    for reason, n in reasons.most_common():
        print(f"| {n} | {', '.join(sorted(owners[reason]))} | {reason} |")
    print()
    if failed:
        print("Failed:", *failed, sep="\n* ")


if __name__ == "__main__":
    main(sys.argv[1:])
