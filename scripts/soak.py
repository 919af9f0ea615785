#!/usr/bin/env python3
"""Soak test (not in CI; see docs/reliability.md): runs the PV job on a real
`cutpoint serve` with 1 s checkpoints to the given storage for a while and
samples, every `--every` seconds: the job's checkpoint counts, the server's
RSS, and what storage holds (`cutpoint checkpoints usage`). Fails unless no
checkpoint failed, storage stayed bounded by retention, and RSS stayed flat.

Usage: scripts/soak.py --bin BIN --checkpoint-dir s3://bucket/prefix [--minutes 30]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "soak"


def api(addr, path, body=None):
    req = urllib.request.Request(
        f"http://{addr}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--checkpoint-dir", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--every", type=float, default=10)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=1_000_000)
    ap.add_argument("--retention", type=int, default=3)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cutpoint-soak-")
    seconds = a.minutes * 60
    events = int(a.rate * seconds)
    spec = {
        "job_id": "soak",
        "parallelism": 2,
        "source": {"type": "generator", "partitions": 2, "events": events, "keys": a.keys,
                   "seed": 42, "rate_per_s": a.rate},
        "key_by": "app_id",
        "aggregate": {"type": "count"},
        "sink": {"type": "discard"},
        "checkpoint": {"interval_ms": 1000, "retention": a.retention, "type": "incremental"},
    }
    env = dict(os.environ, CUTPOINT_TOKEN=TOKEN)
    server = subprocess.Popen(
        [a.bin, "serve", "--listen", "127.0.0.1:0", "--checkpoint-dir", a.checkpoint_dir,
         "--work-dir", os.path.join(work, "work")],
        stdout=subprocess.PIPE, stderr=open(os.path.join(work, "server.log"), "w"), env=env, text=True)
    try:
        addr = json.loads(server.stdout.readline())["listening"]
        api(addr, "/v1/jobs", spec)
        print(f"soak: {a.minutes} min, {events} events over {a.keys} keys at {a.rate}/s, "
              f"1 s checkpoints, retention {a.retention}, storage {a.checkpoint_dir}", flush=True)
        print("t_s,state,records,completed,failed,rss_mib,objects,bytes,unreferenced,checkpoints", flush=True)
        samples = []
        start = time.time()
        while True:
            time.sleep(a.every)
            job = api(addr, "/v1/jobs/soak")
            usage = json.loads(subprocess.run(
                [a.bin, "checkpoints", "usage", "--checkpoint-dir", a.checkpoint_dir, "--job", "soak", "--json"],
                check=True, capture_output=True, text=True).stdout)["soak"]
            s = {
                "t": round(time.time() - start), "state": job["state"],
                "records": job["records_in"],
                "completed": job["checkpoints_completed"], "failed": job["checkpoints_failed"],
                "rss": round(rss_mib(server.pid), 1), "objects": usage["objects"], "bytes": usage["bytes"],
                "unreferenced": len(usage["unreferenced"]), "checkpoints": len(usage["checkpoints"]),
            }
            samples.append(s)
            print(",".join(str(s[k]) for k in
                           ["t", "state", "records", "completed", "failed", "rss", "objects", "bytes",
                            "unreferenced", "checkpoints"]), flush=True)
            if job["state"] != "RUNNING":
                break
    finally:
        server.terminate()
        server.wait(timeout=60)

    last = samples[-1]
    steady = [s for s in samples if s["t"] >= 120] or samples
    half = len(steady) // 2
    rss_first = max(s["rss"] for s in steady[: max(half, 1)])
    rss_second = max(s["rss"] for s in steady[half:])
    max_objects = max(s["objects"] for s in samples)
    max_bytes = max(s["bytes"] for s in samples)
    problems = []
    if last["state"] != "FINISHED":
        problems.append(f"job ended {last['state']}")
    if last["failed"]:
        problems.append(f"{last['failed']} checkpoints failed")
    if max(s["checkpoints"] for s in samples) > a.retention + 1:
        problems.append("more restorable checkpoints than retention + 1 (one may be in flight)")
    if rss_second > rss_first * 1.2 + 32:
        problems.append(f"RSS grew from {rss_first} to {rss_second} MiB")
    summary = {
        "minutes": round((samples[-1]["t"]) / 60, 1), "state": last["state"],
        "checkpoints_completed": last["completed"], "checkpoints_failed": last["failed"],
        "rss_mib_first_half_max": rss_first, "rss_mib_second_half_max": rss_second,
        "storage_objects_max": max_objects, "storage_bytes_max": max_bytes,
        "storage_objects_end": last["objects"], "storage_bytes_end": last["bytes"],
        "ok": not problems, "problems": problems,
    }
    print(json.dumps(summary), flush=True)
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()
