"""Fail (exit 1) when a fit's final validation ST-AP is below the floor: CI checks the quickstart's result.

    python .ci/check_fit_report.py runs/quickstart/fit_report.json --floor 77
"""

import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="fit_report.json written by ssd_mnv1.training.FitReport")
    ap.add_argument("--floor", type=float, required=True)
    args = ap.parse_args()
    try:
        with open(args.report, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"error: {args.report}: no fit report ({exc})", file=sys.stderr)
        return 1
    after = report.get("st_ap_after")
    if report.get("stopped_by_time"):
        print(f"error: {args.report}: training was stopped by max_time, not by its step count", file=sys.stderr)
        return 1
    if after is None or after < args.floor:
        print(f"error: {args.report}: final validation ST-AP {after} is below the floor {args.floor}", file=sys.stderr)
        return 1
    before = report.get("st_ap_before")
    start = "" if before is None else f"{before:.2f} -> "
    print(f"validation ST-AP {start}{after:.2f} (floor {args.floor}) "
          f"in {report.get('minutes')} min, {report.get('steps')} steps, {report.get('torch_threads')} torch thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
