//! The OpenAPI document is the contract: every documented operation is
//! exercised against the real server, and every response's status, content
//! type and body must be documented for that operation (bodies validated
//! against the schemas of `api/openapi.yaml` with a JSON Schema validator).

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::api::{pv, Server};

const DOC: &str = include_str!("../../api/openapi.yaml");

struct Contract {
    doc: Value,
    seen: BTreeSet<(String, String)>,
}

impl Contract {
    fn load() -> Self {
        Self {
            doc: serde_norway::from_str(DOC).expect("openapi.yaml parses"),
            seen: BTreeSet::new(),
        }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .expect("$ref resolves"),
            None => v,
        }
    }

    /// Checks one response against the documented operation.
    fn check(
        &mut self,
        method: &Method,
        template: &str,
        status: u16,
        content_type: &str,
        body: &str,
    ) {
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        self.seen
            .insert((template.to_string(), method.as_str().to_lowercase()));
        let resp = op["responses"].get(status.to_string()).unwrap_or_else(|| {
            panic!("{method} {template}: status {status} is not documented: {body}")
        });
        let resp = self.resolve(resp);
        let Some(content) = resp.get("content").and_then(Value::as_object) else {
            assert!(
                body.is_empty(),
                "{method} {template} {status}: undocumented body {body}"
            );
            return;
        };
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let media = content.get(ct).unwrap_or_else(|| {
            panic!("{method} {template} {status}: content type {ct} not documented")
        });
        if !ct.ends_with("json") {
            return;
        }
        let instance: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{method} {template}: {e}: {body}"));
        let schema = json!({ "components": self.doc["components"], "allOf": [media["schema"]] });
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: {errors:?}\n{body}"
        );
    }

    /// Whether `instance` is valid against `schema` (a schema of the
    /// document, `$ref`s into its components allowed).
    fn valid(&self, schema: &Value, instance: &Value) -> bool {
        let schema = json!({ "components": self.doc["components"], "allOf": [schema] });
        jsonschema::validator_for(&schema)
            .expect("schema compiles")
            .is_valid(instance)
    }

    /// Whether `body` is a valid JSON request body of the operation.
    fn body_valid(&self, method: &Method, template: &str, body: &Value) -> bool {
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {template} takes no JSON body");
        self.valid(schema, body)
    }

    /// Whether `value` is valid for the parameter `name` of `template`.
    fn param_valid(&self, template: &str, name: &str, value: &Value) -> bool {
        let params = self.doc["paths"][template]["parameters"]
            .as_array()
            .unwrap();
        let param = params
            .iter()
            .map(|p| self.resolve(p))
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{template} has no parameter {name}"));
        self.valid(&param["schema"], value)
    }

    /// Every operation of the document was exercised.
    fn assert_complete(&self) {
        let mut missing = Vec::new();
        for (path, ops) in self.doc["paths"].as_object().unwrap() {
            for method in ops
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
            {
                if !self.seen.contains(&(path.clone(), method.clone())) {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "operations never exercised: {missing:?}"
        );
    }
}

struct Driver<'a> {
    server: &'a Server,
    contract: Contract,
}

impl Driver<'_> {
    /// Sends a request that waits for a checkpoint, acks that checkpoint as
    /// the external task `ext` meanwhile, and returns the answer.
    async fn concurrent_with_ext_ack(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        after: u64,
    ) -> (u16, String) {
        let mut r = self.server.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let pending_request = tokio::spawn(r.send());
        let (_, p) = self
            .call(
                Method::GET,
                "/v1/jobs/{job_id}/checkpoints/pending",
                &format!("/v1/jobs/pv-c/checkpoints/pending?after={after}&wait_ms=5000&task=ext"),
                None,
            )
            .await;
        let n = p["checkpoints"][0]["checkpoint_id"]
            .as_u64()
            .expect("a checkpoint is pending");
        let (s, _) = self
            .call(
                Method::POST,
                "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/acks",
                &format!("/v1/jobs/pv-c/checkpoints/{n}/acks"),
                Some(json!({"task": "ext", "files": []})),
            )
            .await;
        assert_eq!(s, 200);
        let resp = pending_request.await.unwrap().unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn call(
        &mut self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.server.req(method.clone(), path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        self.contract.check(&method, template, status, &ct, &text);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_matches_the_openapi_contract() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let server = Server::start(&chk, Some("contract"));
    let mut d = Driver {
        server: &server,
        contract: Contract::load(),
    };
    let job = "/v1/jobs/{job_id}";
    let cps = "/v1/jobs/{job_id}/checkpoints";
    let one = "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}";

    d.call(Method::GET, "/", "/", None).await;
    d.call(Method::GET, "/healthz", "/healthz", None).await;
    d.call(Method::GET, "/readyz", "/readyz", None).await;
    d.call(Method::GET, "/v1/openapi.yaml", "/v1/openapi.yaml", None)
        .await;
    let spec = pv(
        "pv-c",
        50_000_000,
        1_000,
        200_000,
        json!({"external_tasks": ["ext"]}),
    );
    assert_eq!(
        d.call(Method::POST, "/v1/jobs", "/v1/jobs", Some(spec.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        d.call(Method::POST, "/v1/jobs", "/v1/jobs", Some(spec))
            .await
            .0,
        409
    );
    assert_eq!(
        d.call(
            Method::POST,
            "/v1/jobs",
            "/v1/jobs",
            Some(json!({"job_id": 1}))
        )
        .await
        .0,
        400
    );
    d.call(Method::GET, "/v1/jobs", "/v1/jobs", None).await;
    d.call(Method::GET, job, "/v1/jobs/pv-c", None).await;
    assert_eq!(d.call(Method::GET, job, "/v1/jobs/none", None).await.0, 404);
    d.call(
        Method::GET,
        "/v1/jobs/{job_id}/checkpoints/config",
        "/v1/jobs/pv-c/checkpoints/config",
        None,
    )
    .await;

    // Three checkpoints: acked, declined, acked.
    let job_dir = chk.join("jobs/pv-c");
    let mut completed = Vec::new();
    for (n, decline) in [(1u64, false), (2, true), (3, false)] {
        let (s, t) = d
            .call(
                Method::POST,
                cps,
                "/v1/jobs/pv-c/checkpoints",
                Some(json!({"type": "incremental"})),
            )
            .await;
        assert_eq!((s, t["checkpoint_id"].as_u64()), (202, Some(n)), "{t}");
        let (_, p) = d
            .call(
                Method::GET,
                "/v1/jobs/{job_id}/checkpoints/pending",
                &format!(
                    "/v1/jobs/pv-c/checkpoints/pending?after={}&wait_ms=5000&task=ext",
                    n - 1
                ),
                None,
            )
            .await;
        let prefix = p["checkpoints"][0]["upload_prefix"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/v1/jobs/pv-c/checkpoints/{n}");
        if decline {
            let (s, _) = d
                .call(
                    Method::POST,
                    "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/declines",
                    &format!("{path}/declines"),
                    Some(json!({"task": "ext", "reason": "test"})),
                )
                .await;
            assert_eq!(s, 200);
        } else {
            std::fs::create_dir_all(job_dir.join(&prefix)).unwrap();
            std::fs::write(job_dir.join(&prefix).join("s.bin"), b"x").unwrap();
            let ack = json!({"task": "ext", "files": [{"path": format!("{prefix}s.bin"), "size": 1, "crc32c": 0}]});
            let (s, _) = d
                .call(
                    Method::POST,
                    "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/acks",
                    &format!("{path}/acks"),
                    Some(ack),
                )
                .await;
            assert_eq!(s, 200);
            completed.push(n);
        }
        server.wait(&path, |c| c["status"] != "IN_PROGRESS").await;
        d.call(Method::GET, one, &path, None).await;
    }
    let bad_ack = json!({"task": "ext", "files": [{"path": "../x", "size": 1, "crc32c": 0}]});
    assert_eq!(
        d.call(
            Method::POST,
            "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/acks",
            "/v1/jobs/pv-c/checkpoints/3/acks",
            Some(bad_ack)
        )
        .await
        .0,
        400
    );
    assert_eq!(
        d.call(Method::GET, one, "/v1/jobs/pv-c/checkpoints/99", None)
            .await
            .0,
        404
    );
    d.call(Method::GET, cps, "/v1/jobs/pv-c/checkpoints", None)
        .await;
    d.call(
        Method::GET,
        "/v1/jobs/{job_id}/checkpoints/latest",
        "/v1/jobs/pv-c/checkpoints/latest",
        None,
    )
    .await;
    d.call(
        Method::GET,
        "/v1/jobs/{job_id}/checkpoints/latest",
        "/v1/jobs/pv-c/checkpoints/latest?status=failed",
        None,
    )
    .await;
    d.call(Method::GET, "/metrics", "/metrics", None).await;
    // Delete the older completed one; the newest is refused while running.
    assert_eq!(
        d.call(Method::DELETE, one, "/v1/jobs/pv-c/checkpoints/3", None)
            .await
            .0,
        409
    );
    assert_eq!(
        d.call(Method::DELETE, one, "/v1/jobs/pv-c/checkpoints/1", None)
            .await
            .0,
        204
    );
    d.call(Method::GET, "/v1/storage/jobs", "/v1/storage/jobs", None)
        .await;
    let (_, stored) = d
        .call(
            Method::GET,
            "/v1/storage/jobs/{job_id}/checkpoints",
            "/v1/storage/jobs/pv-c/checkpoints",
            None,
        )
        .await;
    assert_eq!(
        stored["checkpoints"].as_array().unwrap().len(),
        1,
        "{stored}"
    );

    let (s, _) = d
        .call(
            Method::POST,
            "/v1/jobs/{job_id}/restore",
            "/v1/jobs/pv-c/restore",
            Some(json!({"checkpoint_id": 3})),
        )
        .await;
    assert_eq!(s, 202);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, j) = d.call(Method::GET, job, "/v1/jobs/pv-c", None).await;
    assert!(j["records_in"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["current_offsets"].as_array().unwrap().len(), 2, "{j}");

    // A savepoint (a full checkpoint: the restored run's first, 1001, as
    // its writer lease starts above the first run's); the external task
    // acks it too.
    let (status, text) = d
        .concurrent_with_ext_ack(Method::POST, "/v1/jobs/pv-c/savepoints", None, 3)
        .await;
    d.contract.check(
        &Method::POST,
        "/v1/jobs/{job_id}/savepoints",
        status,
        "application/json",
        &text,
    );
    assert_eq!(status, 201, "{text}");
    let (_, sps) = d
        .call(Method::GET, "/v1/savepoints", "/v1/savepoints", None)
        .await;
    assert_eq!(sps["savepoints"][0]["savepoint_id"], "pv-c-1001", "{sps}");

    // Stop with a final checkpoint (1002), acked by the external task as well.
    let (status, text) = d
        .concurrent_with_ext_ack(
            Method::POST,
            "/v1/jobs/pv-c/cancel",
            Some(json!({"checkpoint": true, "type": "full"})),
            4,
        )
        .await;
    d.contract.check(
        &Method::POST,
        "/v1/jobs/{job_id}/cancel",
        status,
        "application/json",
        &text,
    );
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["final_checkpoint"], 1002, "{body}");
    assert_eq!(body["result"]["state"], "CANCELLED", "{body}");
    assert_eq!(
        d.call(
            Method::POST,
            "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/pv-c/cancel",
            None
        )
        .await
        .0,
        409
    );
    d.contract.assert_complete();
}

/// What schemathesis found where the document and the server disagreed
/// (issue #14): each request now gets the answer the document gives it —
/// the schema and the server agree on valid (accepted) and invalid (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzer_findings_get_the_documented_answers() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let server = Server::start(&chk, None);
    let mut d = Driver {
        server: &server,
        contract: Contract::load(),
    };
    let spec = pv(
        "pv-f",
        50_000_000,
        1_000,
        100_000,
        json!({"external_tasks": ["ext"]}),
    );
    assert_eq!(
        d.call(Method::POST, "/v1/jobs", "/v1/jobs", Some(spec))
            .await
            .0,
        201
    );

    // `after` is any u64 (it was unbounded in the document).
    let pending = "/v1/jobs/{job_id}/checkpoints/pending";
    for (after, valid, status) in [
        (json!(u64::MAX), true, 200),
        (json!(18_446_744_073_709_551_616.0), false, 400),
    ] {
        assert_eq!(d.contract.param_valid(pending, "after", &after), valid);
        let path = format!("/v1/jobs/pv-f/checkpoints/pending?after={after}&wait_ms=0");
        assert_eq!(
            d.call(Method::GET, pending, &path, None).await.0,
            status,
            "after={after}"
        );
    }

    // Bodies: (operation, body, valid by the document, the server's answer).
    let jobs = "/v1/jobs";
    let mut untyped = pv("pv-untyped", 10, 2, 10, json!({"aggregate": {}}));
    untyped["source"].as_object_mut().unwrap().remove("type");
    let cases = [
        // A source or aggregate without its `type` tag.
        (Method::POST, jobs, jobs.to_string(), untyped, false, 400),
        (
            Method::POST,
            jobs,
            jobs.to_string(),
            pv("pv-typed", 10, 2, 10, json!({})),
            true,
            201,
        ),
        // Both restore points, a null one, a checkpoint id as a string.
        (
            Method::POST,
            "/v1/jobs/{job_id}/restore",
            "/v1/jobs/pv-f/restore".to_string(),
            json!({"checkpoint_id": "latest", "savepoint_id": ""}),
            false,
            400,
        ),
        (
            Method::POST,
            "/v1/jobs/{job_id}/restore",
            "/v1/jobs/pv-f/restore".to_string(),
            json!({"checkpoint_id": null, "savepoint_id": "pv-f-1"}),
            false,
            400,
        ),
        (
            Method::POST,
            "/v1/jobs/{job_id}/restore",
            "/v1/jobs/pv-f/restore".to_string(),
            json!({"checkpoint_id": "1"}),
            false,
            400,
        ),
        // A whole-number float near 2^51, parsed exactly: an id, not found.
        (
            Method::POST,
            "/v1/jobs/{job_id}/restore",
            "/v1/jobs/pv-f/restore".to_string(),
            json!({"checkpoint_id": 2_251_799_813_685_247.0}),
            true,
            404,
        ),
        // `type: null` where the document has no null (the job kept running).
        (
            Method::POST,
            "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/pv-f/cancel".to_string(),
            json!({"checkpoint": false, "savepoint": false, "type": null}),
            false,
            400,
        ),
        (
            Method::POST,
            "/v1/jobs/{job_id}/checkpoints",
            "/v1/jobs/pv-f/checkpoints".to_string(),
            json!({"type": null}),
            false,
            400,
        ),
    ];
    for (method, template, path, body, valid, status) in cases {
        assert_eq!(
            d.contract.body_valid(&method, template, &body),
            valid,
            "{body}"
        );
        let (s, answer) = d.call(method, template, &path, Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {answer}");
    }
    let (_, job) = d
        .call(Method::GET, "/v1/jobs/{job_id}", "/v1/jobs/pv-f", None)
        .await;
    assert_eq!(job["result"], Value::Null, "pv-f still runs: {job}");

    // A whole-number float is an integer: an ack with `"size": 3.0`.
    let (s, t) = d
        .call(
            Method::POST,
            "/v1/jobs/{job_id}/checkpoints",
            "/v1/jobs/pv-f/checkpoints",
            None,
        )
        .await;
    assert_eq!(s, 202, "{t}");
    let n = t["checkpoint_id"].as_u64().unwrap();
    let prefix = format!("chk-{n}/ext/0/");
    std::fs::create_dir_all(chk.join("jobs/pv-f").join(&prefix)).unwrap();
    std::fs::write(chk.join("jobs/pv-f").join(&prefix).join("s.bin"), b"abc").unwrap();
    let ack = json!({"task": "ext", "files": [{"path": format!("{prefix}s.bin"), "size": 3.0, "crc32c": 0.0}]});
    let acks = "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/acks";
    assert!(d.contract.body_valid(&Method::POST, acks, &ack));
    let path = format!("/v1/jobs/pv-f/checkpoints/{n}/acks");
    let (s, a) = d.call(Method::POST, acks, &path, Some(ack)).await;
    assert_eq!(s, 200, "{a}");
    let c = server
        .wait(&format!("/v1/jobs/pv-f/checkpoints/{n}"), |c| {
            c["status"] != "IN_PROGRESS"
        })
        .await;
    assert_eq!(c["status"], "COMPLETED", "{c}");
}

#[test]
#[should_panic(expected = "/v1/jobs 200")]
fn contract_check_rejects_a_body_that_breaks_the_schema() {
    let mut c = Contract::load();
    c.check(
        &Method::GET,
        "/v1/jobs",
        200,
        "application/json",
        r#"{"jobs": [{"job_id": "x", "state": "DANCING"}]}"#,
    );
}

#[test]
#[should_panic(expected = "not documented")]
fn contract_check_rejects_an_undocumented_status() {
    let mut c = Contract::load();
    c.check(&Method::GET, "/healthz", 418, "application/json", "{}");
}
