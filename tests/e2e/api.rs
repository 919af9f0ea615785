//! The REST API over real HTTP against the real binary (`cutpoint serve`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutpoint_core::Key;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{assert_exact, expected_counts};

const BIN: &str = env!("CARGO_BIN_EXE_cutpoint");

/// A `cutpoint serve` process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Server {
    pub fn start(chk: &Path, token: Option<&str>) -> Server {
        Self::start_with(chk, token, None, &[])
    }

    /// Like `start`, with debug logs written to `log`.
    pub fn start_logging(chk: &Path, token: Option<&str>, log: Option<&Path>) -> Server {
        Self::start_with(chk, token, log, &[])
    }

    /// Like `start_logging`, with more `serve` arguments (e.g.
    /// `--enable-test-knobs` for specs with test knobs).
    pub fn start_with(
        chk: &Path,
        token: Option<&str>,
        log: Option<&Path>,
        args: &[&str],
    ) -> Server {
        Self::start_program(Path::new(BIN), chk, token, log, args)
    }

    /// `serve` of the program `bin` (the `cutpoint` binary or a program on
    /// the library with functions of its own).
    pub fn start_program(
        bin: &Path,
        chk: &Path,
        token: Option<&str>,
        log: Option<&Path>,
        args: &[&str],
    ) -> Server {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--checkpoint-dir"])
            .arg(chk)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(match log {
                Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
                None => Stdio::null(),
            })
            .env("CUTPOINT_LOG", "debug");
        if let Some(t) = token {
            cmd.env("CUTPOINT_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("server prints its address");
        Server {
            url: format!("http://{}", v["listening"].as_str().unwrap()),
            child,
            token: token.map(str::to_string),
            http: reqwest::Client::new(),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `pred` holds on the body.
    pub async fn wait(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, v) = self.get(path).await;
            if s == StatusCode::OK && pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on {path}: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pv(job: &str, events: u64, keys: u64, rate: u64, extra: Value) -> Value {
    let mut v = json!({
        "job_id": job,
        "source": {"type": "generator", "partitions": 2, "events": events, "keys": keys, "seed": 42, "rate_per_s": rate},
        "key_by": "app_id",
        "aggregate": {"type": "count"},
        "checkpoint": {"interval_ms": null},
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// Last value per key in the file sink's output (a restore appends updates
/// again, so the last line of a key is its final count).
fn last_values(dir: &Path) -> BTreeMap<Key, i64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            // A SIGKILL can cut a line; the next run appends after it.
            let line = &line[line.rfind('{').unwrap_or(0)..];
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if let (Some(k), Some(c)) = (v["key"].as_i64(), v["value"].as_i64()) {
                    out.insert(Key::Int(k), c);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_kill_server_restore_by_id_from_storage_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (chk, out) = (dir.path().join("chk"), dir.path().join("out"));
    let (events, keys) = (1_500_000, 20_000);
    let server = Server::start(&chk, None);
    let spec = pv(
        "pv-api",
        events,
        keys,
        250_000,
        json!({"sink": {"type": "file", "dir": out}}),
    );
    let (s, job) = server.post("/v1/jobs", &spec).await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    assert_eq!(job["job_id"], "pv-api");
    tokio::time::sleep(Duration::from_millis(600)).await;

    let (s, t) = server
        .post(
            "/v1/jobs/pv-api/checkpoints",
            &json!({"type": "incremental"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{t}");
    let id = t["checkpoint_id"].as_u64().unwrap();
    let done = server
        .wait(t["location"].as_str().unwrap(), |c| {
            c["status"] != "IN_PROGRESS"
        })
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // Every counter exists while the job runs; records are counted live.
    let metrics = server
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{job=\"pv-api\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("cutpoint_checkpoints_failed_total"), 0.0);
    assert_eq!(value("cutpoint_job_restarts_total"), 0.0);
    assert!(value("cutpoint_checkpoints_completed_total") >= 1.0);
    assert!(value("cutpoint_records_read_total") > 0.0);
    assert_eq!(done["num_acknowledged_subtasks"], done["num_subtasks"]);
    assert!(
        done["tasks"]["agg"]["subtasks"].as_array().unwrap().len() == 2,
        "{done}"
    );
    let (_, list) = server.get("/v1/jobs/pv-api/checkpoints").await;
    assert_eq!(list["counts"]["completed"], 1, "{list}");
    assert_eq!(list["history"][0]["id"], id);
    assert!(list["summary"]["state_size"]["max"].as_u64().unwrap() > 0);
    let (_, latest) = server
        .get("/v1/jobs/pv-api/checkpoints/latest?status=completed")
        .await;
    assert_eq!(latest["id"], id);

    // Kill the server mid-run; a new one finds the checkpoint in storage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    let server = Server::start(&chk, None);
    let (s, _) = server.get("/v1/jobs/pv-api").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a fresh server does not run the job"
    );
    let (s, stored) = server.get("/v1/storage/jobs/pv-api/checkpoints").await;
    assert_eq!(s, StatusCode::OK, "{stored}");
    assert_eq!(stored["job_spec_stored"], true);
    let ids: Vec<u64> = stored["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checkpoint_id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&id), "{stored}");

    let (s, r) = server
        .post("/v1/jobs/pv-api/restore", &json!({"checkpoint_id": id}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let fin = server
        .wait("/v1/jobs/pv-api", |j| j["result"].is_object())
        .await;
    assert_eq!(fin["result"]["state"], "FINISHED", "{fin}");
    assert_eq!(fin["restored_from"], json!([id]));
    assert_exact(&last_values(&out), &expected_counts(42, keys, events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_task_acks_complete_checkpoints_and_declines_fail_them() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let server = Server::start(&chk, None);
    let spec = pv(
        "pv-ext",
        3_000_000,
        5_000,
        300_000,
        json!({"external_tasks": ["ext"]}),
    );
    let (s, job) = server.post("/v1/jobs", &spec).await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    assert!(job["tasks"].as_array().unwrap().contains(&json!("ext[0]")));

    let (_, t) = server.post("/v1/jobs/pv-ext/checkpoints", &json!({})).await;
    let id = t["checkpoint_id"].as_u64().unwrap();
    let (s, pending) = server
        .get("/v1/jobs/pv-ext/checkpoints/pending?after=0&wait_ms=5000&task=ext")
        .await;
    assert_eq!(s, StatusCode::OK, "{pending}");
    let p = &pending["checkpoints"][0];
    assert_eq!(p["checkpoint_id"], id);
    let prefix = p["upload_prefix"].as_str().unwrap().to_string();
    assert_eq!(prefix, format!("chk-{id}/ext/0/"));

    // Internal tasks ack; the checkpoint still waits for the external one.
    let path = format!("/v1/jobs/pv-ext/checkpoints/{id}");
    server
        .wait(&path, |c| c["num_acknowledged_subtasks"] == 4)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, c) = server.get(&path).await;
    assert_eq!(c["status"], "IN_PROGRESS", "{c}");

    // The external task writes its state into checkpoint storage...
    let job_dir = chk.join("jobs/pv-ext");
    std::fs::create_dir_all(job_dir.join(&prefix)).unwrap();
    std::fs::write(job_dir.join(&prefix).join("offsets.bin"), b"ext-state").unwrap();
    let handle = json!({"path": format!("{prefix}offsets.bin"), "size": 9, "crc32c": cutpoint_core::checksum::crc32c(b"ext-state")});

    // ...a handle outside its prefix is rejected, and nothing changes.
    for bad in [
        format!("chk-{id}/agg/0/x.sst"),
        format!("{prefix}../../agg/0/x"),
        "shared/other/0/x.sst".to_string(),
        "/etc/passwd".to_string(),
        format!("chk-{}/ext/0/x", id + 1),
    ] {
        let (s, e) = server
            .post(
                &format!("{path}/acks"),
                &json!({"task": "ext", "files": [{"path": bad, "size": 1, "crc32c": 0}]}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert!(e["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:cutpoint:problem:"));
    }
    // Not uploaded yet, or not what was uploaded: 409, upload and ack again.
    for (name, size) in [("missing.bin", 1), ("offsets.bin", 8)] {
        let (s, e) = server
            .post(&format!("{path}/acks"), &json!({"task": "ext", "files": [{"path": format!("{prefix}{name}"), "size": size, "crc32c": 0}]}))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{name}: {e}");
        assert!(e["detail"].as_str().unwrap().contains(name), "{e}");
    }
    // A task the running job does not have: 409; a malformed name: 400.
    for (task, status) in [
        ("nope", StatusCode::CONFLICT),
        ("../x", StatusCode::BAD_REQUEST),
    ] {
        let (s, e) = server
            .post(&format!("{path}/acks"), &json!({"task": task, "files": []}))
            .await;
        assert_eq!(s, status, "{task}: {e}");
        let (s, _) = server
            .get(&format!("/v1/jobs/pv-ext/checkpoints/pending?task={task}"))
            .await;
        assert_eq!(s, status, "pending?task={task}");
    }
    let (s, _) = server
        .post(
            "/v1/jobs/pv-ext/checkpoints/999/acks",
            &json!({"task": "ext", "files": []}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, c) = server.get(&path).await;
    assert_eq!(
        c["status"], "IN_PROGRESS",
        "rejected acks changed nothing: {c}"
    );

    // The real ack completes the checkpoint; its handle is in _metadata.
    let (s, a) = server
        .post(
            &format!("{path}/acks"),
            &json!({"task": "ext", "files": [handle]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let c = server.wait(&path, |c| c["status"] != "IN_PROGRESS").await;
    assert_eq!(c["status"], "COMPLETED", "{c}");
    let meta: Value = serde_json::from_slice(
        &std::fs::read(job_dir.join(format!("chk-{id}/_metadata"))).unwrap(),
    )
    .unwrap();
    let ext = meta["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["task"]["operator"] == "ext")
        .expect("ext in metadata");
    assert_eq!(ext["files"][0]["path"], format!("{prefix}offsets.bin"));
    let (s, _) = server
        .post(
            &format!("{path}/acks"),
            &json!({"task": "ext", "files": []}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "an ack for a completed checkpoint");

    // A decline fails the next checkpoint.
    let (_, t) = server
        .post("/v1/jobs/pv-ext/checkpoints", &json!({"type": "full"}))
        .await;
    let id2 = t["checkpoint_id"].as_u64().unwrap();
    let path2 = format!("/v1/jobs/pv-ext/checkpoints/{id2}");
    let (s, d) = server
        .post(
            &format!("{path2}/declines"),
            &json!({"task": "ext", "reason": "disk full"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let c = server.wait(&path2, |c| c["status"] != "IN_PROGRESS").await;
    assert_eq!(c["status"], "FAILED");
    assert!(
        c["failure_message"].as_str().unwrap().contains("disk full"),
        "{c}"
    );
    assert!(
        !job_dir.join(format!("chk-{id2}")).exists(),
        "a failed checkpoint leaves nothing"
    );
    let (s, _) = server.post("/v1/jobs/pv-ext/cancel", &json!({})).await;
    assert_eq!(s, StatusCode::OK);
}

/// The spec's test knobs are refused over HTTP unless the server was
/// started with `--enable-test-knobs`; with it, a job with one runs (and the
/// knob takes effect), and the knobs' bounds still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_knobs_need_the_servers_flag() {
    let dir = tempfile::tempdir().unwrap();
    let knobs = [
        (
            "inject_failure",
            json!({"subtask": 0, "after_records": 100_000}),
        ),
        (
            "inject_barrier_delay",
            json!({"partition": 1, "delay_ms": 10}),
        ),
        ("inject_processing_delay_us", json!(10)),
    ];
    let spec = |knob: &str, value: &Value| {
        pv(
            "pv-knob",
            400_000,
            1_000,
            400_000,
            json!({"checkpoint": {"interval_ms": 100}, knob: value}),
        )
    };
    let plain = Server::start(&dir.path().join("plain"), None);
    for (knob, value) in &knobs {
        let (s, e) = plain.post("/v1/jobs", &spec(knob, value)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{knob}: {e}");
        let detail = e["detail"].as_str().unwrap();
        assert!(
            detail.contains(knob) && detail.contains("--enable-test-knobs"),
            "{e}"
        );
    }
    let (s, jobs) = plain.get("/v1/jobs").await;
    assert_eq!(
        (s, jobs["jobs"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );

    let testing = Server::start_with(
        &dir.path().join("testing"),
        None,
        None,
        &["--enable-test-knobs"],
    );
    let (s, e) = testing
        .post(
            "/v1/jobs",
            &spec("inject_processing_delay_us", &json!(1e19)),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("inject_processing_delay_us"),
        "{e}"
    );
    let (s, job) = testing
        .post("/v1/jobs", &spec(knobs[0].0, &knobs[0].1))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let done = testing
        .wait("/v1/jobs/pv-knob", |j| j["result"].is_object())
        .await;
    assert_eq!(done["result"]["state"], "FINISHED", "{done}");
    assert_eq!(done["restarts"], 1, "the injected failure happened: {done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let log = dir.path().join("server.log");
    let server = Server::start_logging(&chk, Some("s3cret-token"), Some(&log));
    let spec = pv("pv-bad", 50_000_000, 1_000, 100_000, json!({}));
    let (s, _) = server.post("/v1/jobs", &spec).await;
    assert_eq!(s, StatusCode::CREATED);

    let raw = |method: reqwest::Method, path: &str, body: Option<Vec<u8>>| {
        let mut r = server
            .req(method, path)
            .header("content-type", "application/json");
        if let Some(b) = body {
            r = r.body(b);
        }
        r.send()
    };
    let cases: Vec<(reqwest::Method, &str, Option<Vec<u8>>, StatusCode)> = vec![
        (
            reqwest::Method::POST,
            "/v1/jobs",
            Some(b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs",
            Some(serde_json::to_vec(&pv("x", 1, 1, 1, json!({"parallelism": "two"}))).unwrap()),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs",
            Some(serde_json::to_vec(&pv("x", 1, 1, 1, json!({"surprise": 1}))).unwrap()),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs",
            Some(serde_json::to_vec(&pv("../../etc", 1, 1, 1, json!({}))).unwrap()),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs",
            Some(vec![b' '; 2 * 1024 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs",
            Some(serde_json::to_vec(&spec).unwrap()),
            StatusCode::CONFLICT,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs/pv-bad/checkpoints",
            Some(br#"{"type":"weird"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs/pv-bad/restore",
            Some(br#"{"checkpoint_id":-1}"#.to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs/pv-bad/restore",
            Some(br#"{"checkpoint_id":12345}"#.to_vec()),
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::GET,
            "/v1/jobs/nope",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::GET,
            "/v1/jobs/pv-bad/checkpoints/77",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::GET,
            "/v1/jobs/pv-bad/checkpoints/1x",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/v1/jobs/..%2F..%2Fetc/checkpoints",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/v1/storage/jobs/a%2Fb/checkpoints",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/v1/jobs/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/v1/storage/jobs/never/checkpoints",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::DELETE,
            "/v1/jobs/pv-bad/checkpoints/5",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::PUT,
            "/v1/jobs",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            "/v1/nothing-here",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::GET,
            "/v1/jobs/pv-bad/checkpoints/latest?status=sideways",
            None,
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, body, want) in cases {
        let r = raw(method.clone(), path, body).await.unwrap();
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        assert_eq!(
            ct.as_deref(),
            Some("application/problem+json"),
            "{method} {path}: {text}"
        );
        let p: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(p["status"], want.as_u16());
        assert!(p["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:cutpoint:problem:"));
    }

    // Missing or wrong token: 401 everywhere but the probes.
    let anon = reqwest::Client::new();
    for (token, path) in [
        (None, "/v1/jobs"),
        (Some("wrong"), "/v1/jobs"),
        (None, "/metrics"),
        (Some("s3cret-tokenX"), "/v1/storage/jobs"),
    ] {
        let mut r = anon.get(format!("{}{path}", server.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?} {path}");
    }
    let r = anon
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The dashboard page is static and open; it holds no data and loads
    // nothing from elsewhere (its CSP forbids it).
    let r = anon.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>"));
    for external in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "@import",
        "url(http",
        "//cdn",
    ] {
        assert!(
            !page.contains(external),
            "the page loads nothing: {external}"
        );
    }

    // Still serving, nothing changed: one job, running, no checkpoint.
    let (s, jobs) = server.get("/v1/jobs").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs["jobs"][0]["state"], "RUNNING");
    let (_, c) = server.get("/v1/jobs/pv-bad/checkpoints").await;
    assert_eq!(c["counts"]["total"], 0, "{c}");
    let stored: Vec<_> = std::fs::read_dir(chk.join("jobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(stored, vec![std::ffi::OsString::from("pv-bad")]);
    // The token (the right one or a wrong one) is never logged, even at debug.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("request"), "debug logs were written");
    assert!(
        !logged.contains("s3cret-token"),
        "the token leaked into the logs"
    );
    let (s, _) = server.post("/v1/jobs/pv-bad/cancel", &json!({})).await;
    assert_eq!(s, StatusCode::OK);
}

#[test]
fn non_loopback_bind_without_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--checkpoint-dir"])
        .arg(dir.path())
        .env_remove("CUTPOINT_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("without a token"));
}

#[test]
fn cli_client_drives_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let server = Server::start(&chk, Some("cli-token"));
    let spec = dir.path().join("pv.json");
    std::fs::write(
        &spec,
        pv("pv-cli", 50_000_000, 1_000, 200_000, json!({})).to_string(),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .args(["--server", &server.url])
            .env("CUTPOINT_TOKEN", "cli-token")
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["jobs", "submit", spec.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("submitted job pv-cli"), "{out}");
    let (ok, out, err) = cli(&[
        "checkpoints",
        "trigger",
        "pv-cli",
        "--type",
        "full",
        "--wait",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("checkpoint 1: COMPLETED"), "{out}");
    let (ok, out, _) = cli(&["checkpoints", "list", "--job", "pv-cli", "--json"]);
    assert!(ok);
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows["checkpoints"][0]["checkpoint_id"], 1, "{rows}");
    let (ok, out, _) = cli(&["checkpoints", "show", "pv-cli", "1"]);
    assert!(ok);
    assert!(out.contains("agg") && out.contains("COMPLETED"), "{out}");
    let (ok, out, _) = cli(&["jobs", "list"]);
    assert!(
        ok && out.contains("pv-cli") && out.contains("RUNNING"),
        "{out}"
    );
    let (ok, out, err) = cli(&["restore", "pv-cli", "--checkpoint", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("restarted from checkpoint 1"), "{out}");
    let (ok, _, err) = cli(&["checkpoints", "show", "pv-cli", "999"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, out, err) = cli(&["jobs", "cancel", "pv-cli"]);
    assert!(ok, "{err}");
    assert!(out.contains("CANCELLED"), "{out}");
    // A wrong token is an error with the server's reason.
    let o = Command::new(BIN)
        .args(["jobs", "list", "--server", &server.url])
        .env("CUTPOINT_TOKEN", "nope")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"));
}
