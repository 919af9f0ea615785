"""schemathesis hooks for scripts/fuzz-api.sh (loaded through SCHEMATHESIS_HOOKS).

api/openapi.yaml states every rule a JSON Schema can state; the server
answers 400 to what it forbids and accepts (or answers 404/409 for an
unknown or busy resource) what it allows. A few documented rules lie beyond
a schema: one field against another, or against the deployment. Positive
(schema-valid) requests are made to keep them here, so that
positive_data_acceptance still holds every other rule to account:

- POST /v1/jobs: the cross-field rules of the JobSubmission description
  (parallelism <= max_parallelism, also a stage's; key_by `app_id` and an
  aggregate field of `value`, `app_id` or `user_id` with a generator, an
  event_time field of `ts` with a generator, a window (unless of
  processing time, then without allowed lateness), key_by left out only
  with a window, and a generator's
  disorder_ms only with event_time and a window only of count, sum, min,
  max, avg, count_distinct or top_n, a top_n only with a window, a sliding
  window's slide_ms at most its size_ms and at least a hundredth of it, an
  interval join with event_time, without a window, its lower_ms at most
  its upper_ms, a window join with a window without allowed lateness, a
  join (any) names one of two or more sources, so is every filter field with a
  generator and its value an integer, a string filter value compares with
  eq or ne; each file sink of a sink list in its own folder, stdout listed
  once, a late_sink only with an event-time window or an interval join,
  in a folder of its own and not stdout; stage ids unique and not source,
  agg, sink or an external task, ignoring case; the stage right after a join
  or a window neither groups by a value bucket nor sums, their updates
  being lists). A `process` aggregate names a
  function of the serving program; this server (the stock binary) has none
  and answers 400 (tested in tests/e2e/fraud.rs), so it becomes a count
  (a `process_window` too);
  `transforms` (the job's and a stage's) name steps of the serving program
  too, so they are dropped. Test
  knobs are dropped: this server runs as in production, without
  --enable-test-knobs, and refuses them (400, tested in tests/e2e/api.rs).
  Savepoint paths are put under this server's storage root (a path elsewhere
  is a documented 400).
- POST .../restore: the same for `savepoint_id` paths.
- POST .../acks: a handle lies under `chk-{checkpoint_id}/{task}/0/` of the
  request's own checkpoint and task (another prefix is a documented 400).

One check is narrowed, not excluded: ensure_resource_availability (ST302)
reads a 404 from an operation below a just-created job as "the job is
gone". POST /v1/jobs/{job_id}/restore answers 404 when storage holds no such
checkpoint or savepoint as the body names (documented: the 404's detail
names the checkpoint or savepoint); that one case is dropped, a 404 that
names the job is still a failure.

Generated jobs are also made cheap and harmless on a 2-core machine: a
generator emits at most 10,000 events on at most 2 partitions, parallelism is
at most 2, files sources read the fuzz input file, file sinks write into the
fuzz work directory (never a generated path), restarts and checkpoint
timeouts are short. Long-polls wait at most 200 ms. Only the body (or query)
of a request generated as valid there is changed; negative cases go out as
generated.
"""

import os

import schemathesis
from schemathesis.core.parameters import ParameterLocation

WORK = os.environ["FUZZ_WORK"]
STORAGE_ROOT = os.environ["FUZZ_STORAGE_ROOT"]
INPUT = os.environ["FUZZ_INPUT"]
KNOBS = ("inject_failure", "inject_barrier_delay", "inject_processing_delay_us")
MAX_EVENTS = 10_000
MAX_WAIT_MS = 200
# Aggregates with typed state (a generated field).
TYPED = ("count_distinct", "dedup", "min", "max", "avg")


def _valid_at(case, location):
    # The check that holds positive data to account (ST202) goes by the
    # case's overall mode; a component can still be marked negative when a
    # mutation left it schema-valid and the case was counted positive.
    meta = case.meta
    if meta is None or meta.generation.mode.is_positive:
        return True
    return not meta.is_negative_at(location)


def _cap(obj, key, lo=None, hi=None):
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    value = int(value)
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    obj[key] = value


def _savepoint_path(path):
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return f"{STORAGE_ROOT}/savepoints/{name}"


def _source(src):
    src = dict(src)
    if src.get("type") == "generator":
        _cap(src, "partitions", hi=2)
        _cap(src, "events", hi=MAX_EVENTS)
    elif src.get("type") == "files":
        src["paths"] = [INPUT] * min(len(src.get("paths") or [INPUT]), 2)
    return src


def _sources(spec):
    spec["source"] = _source(spec["source"])
    if isinstance(spec.get("union"), list):
        spec["union"] = [_source(s) for s in spec["union"][:1]]
    agg = spec.get("aggregate") or {}
    if agg.get("type") in ("process", "process_window"):
        agg = {"type": "count"}
    spec.pop("transforms", None)
    if agg.get("type") == "join":
        if not spec.get("union"):
            spec["union"] = [{"type": "generator", "events": 100, "keys": 10}]
        agg = dict(agg, dimension_source=min(int(agg["dimension_source"]), len(spec["union"])))
    if agg.get("type") == "interval_join":
        if not spec.get("union"):
            spec["union"] = [{"type": "generator", "events": 100, "keys": 10}]
        lo, hi = sorted((agg["lower_ms"], agg["upper_ms"]))
        right = min(int(agg["right_source"]), len(spec["union"]))
        agg = dict(agg, right_source=right, lower_ms=lo, upper_ms=hi)
        if not isinstance(spec.get("event_time"), dict):
            spec["event_time"] = {"field": "ts"}
        spec.pop("window", None)
    if agg.get("type") == "window_join":
        if not spec.get("union"):
            spec["union"] = [{"type": "generator", "events": 100, "keys": 10}]
        agg = dict(agg, right_source=min(int(agg["right_source"]), len(spec["union"])))
    sources = [spec["source"], *spec.get("union", [])]
    fields = ("value", "app_id", "user_id", "amount")
    if any(s.get("type") == "generator" for s in sources):
        if "key_by" in spec or "window" not in spec:
            spec["key_by"] = "app_id"
        typed = ("sum", "top_n", "interval_join", "window_join", *TYPED)
        if agg.get("type") in typed and agg.get("field") not in fields:
            agg = dict(agg, field="user_id")
        if isinstance(spec.get("event_time"), dict):
            spec["event_time"] = dict(spec["event_time"], field="ts")
    w = spec.get("window")
    if isinstance(w, dict) and w.get("time") == "processing":
        spec["window"] = dict(w, allowed_lateness_ms=0)
    if "event_time" not in spec:
        if not (isinstance(w, dict) and w.get("time") == "processing"):
            spec.pop("window", None)
        for s in sources:
            s.pop("disorder_ms", None)
    windowed = ("count", "sum", "min", "max", "avg", "count_distinct", "top_n", "window_join")
    if "window" in spec and agg.get("type") not in windowed:
        agg = {"type": "count"}
    if "window" not in spec and agg.get("type") in ("top_n", "window_join"):
        agg = {"type": "count"}
    if agg.get("type") == "window_join":
        spec["window"] = dict(spec["window"], allowed_lateness_ms=0)
    w = spec.get("window")
    if isinstance(w, dict) and w.get("type") == "sliding":
        # slide_ms <= size_ms, and at most 100 windows per record.
        size = w["size_ms"]
        slide = min(max(w["slide_ms"], -(-size // 100)), size)
        spec["window"] = dict(w, slide_ms=slide)
    spec["aggregate"] = agg
    if "late_sink" in spec:
        # Only where records can be late (an event-time window or an
        # interval join); its own folder, stdout once.
        late = spec["late_sink"]
        w = spec.get("window")
        event_window = isinstance(w, dict) and w.get("time", "event") == "event"
        can_be_late = "event_time" in spec and (event_window or agg.get("type") == "interval_join")
        if not can_be_late or (isinstance(late, dict) and late.get("type") == "stdout"):
            spec.pop("late_sink")
    if "window" not in spec and not spec.get("key_by"):
        # Only a windowed job may leave key_by out (a global window).
        spec["key_by"] = "app_id"
    filters = []
    for f in spec.get("filter") or []:
        f = dict(f)
        if isinstance(f.get("value"), str) and f.get("op") not in ("eq", "ne"):
            f["op"] = "eq"
        if any(s.get("type") == "generator" for s in sources):
            if f.get("field") not in fields:
                f["field"] = "amount"
            if isinstance(f.get("value"), str):
                f["value"] = 0
        filters.append(f)
    if "filter" in spec:
        spec["filter"] = filters


def _stages(spec):
    stages = spec.get("stages")
    if not isinstance(stages, list):
        return
    taken = {"source", "agg", "sink"}
    taken |= {str(t).lower() for t in spec.get("external_tasks") or []}
    out = []
    for i, stage in enumerate(stages[:2]):
        stage = dict(stage)
        stage.pop("transforms", None)
        if str(stage.get("id", "")).lower() in taken:
            stage["id"] = f"stage{i}x"
        taken.add(str(stage["id"]).lower())
        _cap(stage, "parallelism", hi=min(2, spec.get("max_parallelism", 128)))
        joins = ("join", "interval_join")
        if i == 0 and ((spec.get("aggregate") or {}).get("type") in joins or "window" in spec):
            stage["key_by"] = {"type": "key"}
            stage["aggregate"] = {"type": "count"}
        out.append(stage)
    spec["stages"] = out


def _settings(spec):
    _cap(spec, "parallelism", hi=2)
    late = spec.get("late_sink")
    if isinstance(late, dict) and "dir" in late:
        spec["late_sink"] = dict(late, dir=os.path.join(WORK, "late", str(spec["job_id"])))
    if "max_parallelism" in spec:
        _cap(spec, "max_parallelism", lo=spec.get("parallelism", 2))
    sink = spec.get("sink")
    if isinstance(sink, dict) and "dir" in sink:
        spec["sink"] = dict(sink, dir=os.path.join(WORK, "sinks", str(spec["job_id"])))
    elif isinstance(sink, list):
        # Each file sink its own folder, stdout at most once.
        sinks, stdout = [], False
        for i, s in enumerate(sink):
            if isinstance(s, dict) and "dir" in s:
                s = dict(s, dir=os.path.join(WORK, "sinks", str(spec["job_id"]), str(i)))
            elif isinstance(s, dict) and s.get("type") == "stdout":
                if stdout:
                    continue
                stdout = True
            sinks.append(s)
        spec["sink"] = sinks or [{"type": "discard"}]
    if isinstance(spec.get("checkpoint"), dict):
        c = spec["checkpoint"] = dict(spec["checkpoint"])
        _cap(c, "interval_ms", lo=200)
        _cap(c, "timeout_ms", hi=5000)
        _cap(c, "min_pause_ms", hi=1000)
        _cap(c, "orphan_sweep_interval_ms", lo=1000)
    if isinstance(spec.get("restart"), dict):
        r = spec["restart"] = dict(spec["restart"])
        _cap(r, "max_attempts", hi=2)
        _cap(r, "delay_ms", hi=500)


def job_spec(spec):
    spec = {k: v for k, v in spec.items() if k not in KNOBS}
    _sources(spec)
    _settings(spec)
    _stages(spec)
    restore = spec.get("restore_from")
    if isinstance(restore, str) and restore.startswith("savepoint:") and "/" in restore:
        spec["restore_from"] = "savepoint:" + _savepoint_path(restore[len("savepoint:"):])
    return spec


def restore_request(body):
    sp = body.get("savepoint_id")
    if isinstance(sp, str) and "/" in sp:
        body = dict(body, savepoint_id=_savepoint_path(sp))
    return body


def ack_request(body, checkpoint_id):
    task = body.get("task")
    files = []
    for f in body.get("files") or []:
        f = dict(f)
        name = f["path"].rsplit("/", 1)[-1]
        scope = "shared" if f["path"].startswith("shared/") else f"chk-{int(checkpoint_id)}"
        f["path"] = f"{scope}/{task}/0/{name}"
        files.append(f)
    if "files" in body:
        body = dict(body, files=files)
    return body


def _problem_detail(response):
    try:
        return str(response.json().get("detail", ""))
    except Exception:  # not a problem+json body: keep the failure
        return ""


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if getattr(failure, "code", None) != "ST302" or response.status_code != 404:
        return True
    detail = _problem_detail(response)
    names_restore_point = detail.startswith(("checkpoint ", "savepoint ", "no restorable checkpoint"))
    return not (case.operation.path.endswith("/restore") and names_restore_point)


@schemathesis.hook
def map_case(context, case):
    method, path = case.operation.method.upper(), case.operation.path
    body_ok = _valid_at(case, ParameterLocation.BODY) and isinstance(case.body, dict)
    if method == "POST" and path == "/v1/jobs" and body_ok:
        case.body = job_spec(case.body)
    elif method == "POST" and path.endswith("/restore") and body_ok:
        case.body = restore_request(case.body)
    elif method == "POST" and path.endswith("/acks") and body_ok:
        checkpoint_id = (case.path_parameters or {}).get("checkpoint_id", "0")
        if str(checkpoint_id).isdigit():
            case.body = ack_request(case.body, checkpoint_id)
    elif path.endswith("/pending") and case.query and _valid_at(case, ParameterLocation.QUERY):
        _cap(case.query, "wait_ms", hi=MAX_WAIT_MS)
    return case
