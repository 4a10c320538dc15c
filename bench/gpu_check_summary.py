"""The summary files of bench/gpu_check.sh: $OUT/summary.json and $OUT/summary.md, rewritten after
every stage so that a check cut short still says what it did.

    python bench/gpu_check_summary.py init  --out DIR --device cuda --budget 520 --sha SHA [--gpu TEXT] [--note TEXT]
    python bench/gpu_check_summary.py stage --out DIR --name NAME --rc RC --start S --end E --limit L
                                            [--junit XML] [--bench DIR --bench-name core] [--note TEXT]
    python bench/gpu_check_summary.py running --out DIR --name NAME --start S --limit L
    python bench/gpu_check_summary.py skip  --out DIR --name NAME --note TEXT
    python bench/gpu_check_summary.py finish --out DIR --elapsed S

Stage status from the exit code: 0 ok; 124/137 (timeout's codes) timeout, the stage was cut at its
limit (pytest still reported the tests it ran: it was stopped with SIGINT); 5 no tests; else
failed. Test counts and failures come from pytest's JUnit XML; a benchmark stage copies its
bench.json (partial when cut) to $OUT/bench_<name>.json and writes bench_<name>.md next to it.
Standard library only, except the markdown of a benchmark (colbert_fast.benchmark.report).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SCHEMA = "colbert_fast.gpu_check/1"
MAX_FAILURES = 30


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def _load(out: Path) -> dict:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {"schema": SCHEMA, "stages": []}


def status_of(rc: int) -> str:
    if rc == 0:
        return "ok"
    if rc in (124, 137):
        return "timeout"
    if rc == 5:
        return "no tests"
    return "failed"


def junit_counts(path: Path) -> tuple[dict, list[str]]:
    """({tests, passed, failed, errors, skipped}, ["nodeid: message", ...]) from a JUnit XML file.

    A file cut short (a process killed while writing it) gives what could be parsed and a note."""
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return counts | {"unreadable": f"{type(e).__name__}: {e}"}, failures
    for case in root.iter("testcase"):
        if not case.get("name"):
            continue  # the placeholder pytest writes for an interrupted run
        counts["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name')}"
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), None)
        if kind is None:
            counts["passed"] += 1
        elif kind == "skipped":
            counts["skipped"] += 1
        else:
            counts["failed" if kind == "failure" else "errors"] += 1
            message = (case.find(kind).get("message") or "").splitlines()
            if len(failures) < MAX_FAILURES:
                failures.append(f"{kind.upper()} {name}: {(message[0] if message else '')[:300]}")
    return counts, failures


def bench_summary(bench_dir: Path, out: Path, name: str) -> dict:
    """Copy the stage's bench.json to out/bench_<name>.json, write its markdown; row counts."""
    src = bench_dir / "bench.json"
    if not src.exists():
        return {"result": "no bench.json was written"}
    doc = json.loads(src.read_text())
    shutil.copyfile(src, out / f"bench_{name}.json")
    md = bench_dir / "bench.md"
    if md.exists() and not doc.get("partial"):
        shutil.copyfile(md, out / f"bench_{name}.md")
    else:  # cut short: the command wrote only the partial JSON
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from colbert_fast.benchmark import report

            head = "PARTIAL: the benchmark was cut at its time limit; the workloads below were done.\n\n"
            (out / f"bench_{name}.md").write_text(head + report.markdown(doc))
        except Exception as e:  # noqa: BLE001 (the JSON is the result; the markdown is a view)
            (out / f"bench_{name}.md").write_text(f"markdown failed: {type(e).__name__}: {e}\n")
    rows = doc.get("rows", [])
    by_status: dict = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    bad = [
        f"{r['workload']} {r['dtype']} {r['impl']}: {r['status']}: {r.get('note', '')[:200]}"
        for r in rows
        if r["status"] in ("wrong", "error")
    ]
    return {
        "file": f"bench_{name}.json",
        "partial": bool(doc.get("partial")),
        "workloads": [f"{w['name']} {w['dtype']}" for w in doc.get("workloads", [])],
        "rows": by_status,
        "problems": bad[:MAX_FAILURES],
        "device": doc.get("device", {}).get("name"),
    }


def _set_stage(doc: dict, stage: dict) -> None:
    """Replace the stage's record in place (a running stage keeps its position), else append it."""
    names = [s["name"] for s in doc["stages"]]
    if stage["name"] in names:
        doc["stages"][names.index(stage["name"])] = stage
    else:
        doc["stages"].append(stage)


def verdict(doc: dict) -> str:
    stages = doc["stages"]
    if any(s["status"] == "failed" for s in stages):
        return "FAILED"
    if any(s.get("bench", {}).get("problems") for s in stages):
        return "FAILED"
    if any(s["status"] in ("timeout", "skipped", "running") for s in stages) or not doc.get("finished"):
        return "INCOMPLETE"
    return "OK"


def markdown(doc: dict) -> str:
    lines = [
        f"# GPU check: {verdict(doc)}",
        "",
        f"- device: {doc.get('device')}; GPU: {doc.get('gpu') or 'none'}",
        f"- git {doc.get('git_sha')}; started {doc.get('started_at')}; budget {doc.get('budget_s')} s; "
        f"elapsed {doc.get('elapsed_s', '?')} s{'' if doc.get('finished') else ' (still running or cut off)'}",
    ]
    lines += [f"- {n}" for n in doc.get("notes", [])]
    lines += [
        "",
        "| stage | status | seconds | limit s | tests (passed/failed/errors/skipped) | note |",
        "|---|---|---|---|---|---|",
    ]
    for s in doc["stages"]:
        t = s.get("tests")
        tests = f"{t['passed']}/{t['failed']}/{t['errors']}/{t['skipped']}" if t else "-"
        seconds = "-" if s.get("seconds") is None else f"{s['seconds']:.0f}"
        limit = "-" if s.get("limit_s") is None else f"{s['limit_s']:.0f}"
        lines.append(f"| {s['name']} | {s['status']} | {seconds} | {limit} | {tests} | {s.get('note', '')} |")
    for s in doc["stages"]:
        if s.get("failures"):
            lines += ["", f"## {s['name']}: failures", ""] + [f"- {f}" for f in s["failures"]]
        b = s.get("bench")
        if b and b.get("file"):
            lines += [
                "",
                f"## {s['name']}: {b['file']}{' (PARTIAL)' if b['partial'] else ''}",
                "",
                f"- rows by status: {b['rows']}; workloads: {', '.join(b['workloads'])}",
            ]
            lines += [f"- {p}" for p in b["problems"]]
        if s.get("engine_md"):
            lines += ["", f"## {s['name']}", ""] + s["engine_md"].strip().splitlines()[1:]
    if doc.get("git_sha") and any(s.get("bench", {}).get("file") for s in doc["stages"]):
        lines += [
            "",
            "Commit the benchmark files as bench/results/<card>-<date>-<sha>.{json,md} (card, date and sha are in "
            "each JSON's device, created and git fields).",
        ]
    return "\n".join(lines) + "\n"


def write(out: Path, doc: dict) -> None:
    doc["verdict"] = verdict(doc)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out / "summary.json")
    (out / "summary.md").write_text(markdown(doc))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["init", "running", "stage", "skip", "finish"])
    p.add_argument("--out", required=True)
    p.add_argument("--device")
    p.add_argument("--budget", type=float)
    p.add_argument("--sha")
    p.add_argument("--gpu")
    p.add_argument("--name")
    p.add_argument("--rc", type=int)
    p.add_argument("--start", type=float)
    p.add_argument("--end", type=float)
    p.add_argument("--limit", type=float)
    p.add_argument("--junit")
    p.add_argument("--bench")
    p.add_argument("--bench-name")
    p.add_argument("--engine", help="bench/engine_gpu.py's engine.json: kept in summary.json, its table in summary.md")
    p.add_argument("--note", default="")
    p.add_argument("--elapsed", type=float)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = _load(out)
    if args.action == "init":
        doc = {
            "schema": SCHEMA,
            "device": args.device,
            "gpu": args.gpu,
            "git_sha": args.sha,
            "started_at": _now(),
            "budget_s": args.budget,
            "finished": False,
            "notes": [args.note] if args.note else [],
            "stages": [],
        }
    elif args.action == "stage":
        stage = {
            "name": args.name,
            "status": status_of(args.rc),
            "exit_code": args.rc,
            "started_s": args.start,
            "seconds": None if args.end is None else args.end - args.start,
            "limit_s": args.limit,
            "note": args.note,
        }
        if stage["status"] == "timeout":
            stage["note"] = (stage["note"] + "; " if stage["note"] else "") + f"cut at its {args.limit:.0f} s limit"
        if args.junit:
            stage["tests"], stage["failures"] = junit_counts(Path(args.junit))
            if stage["status"] == "ok" and (stage["tests"]["failed"] or stage["tests"]["errors"]):
                stage["status"] = "failed"
        if args.bench:
            stage["bench"] = bench_summary(Path(args.bench), out, args.bench_name or args.name)
        if args.engine:  # folded into the summary: the device tool returns at most 8 files
            path = Path(args.engine)
            if path.exists():
                stage["engine"] = json.loads(path.read_text())
                md = path.with_suffix(".md")
                stage["engine_md"] = md.read_text() if md.exists() else ""
            else:
                stage["note"] = (stage["note"] + "; " if stage["note"] else "") + "no engine.json written"
        _set_stage(doc, stage)
    elif args.action == "running":  # left as is if the whole command is killed before the stage ends
        _set_stage(doc, {"name": args.name, "status": "running", "started_s": args.start, "limit_s": args.limit,
                         "seconds": None, "note": "started, not finished"})  # fmt: skip
    elif args.action == "skip":
        _set_stage(doc, {"name": args.name, "status": "skipped", "note": args.note, "seconds": None, "limit_s": None})
    else:
        doc["finished"] = True
        doc["elapsed_s"] = args.elapsed
    if args.elapsed is not None:
        doc["elapsed_s"] = args.elapsed
    write(out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
