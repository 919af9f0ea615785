//! The CLI's client for a running `cutpoint serve`: `jobs …`,
//! `checkpoints trigger|show|delete`, `restore`. Tables by default,
//! `--json` for scripts. The token comes from `CUTPOINT_TOKEN`.

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

/// Talks to one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str) -> Result<Self> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--server must be an http:// or https:// URL, got {server:?}");
        }
        Ok(Self {
            base,
            token: std::env::var("CUTPOINT_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
        })
    }

    /// Calls the API; a non-2xx answer becomes an error with the problem's detail.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let detail = value["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{method} {path}: {status}: {detail}");
        }
        Ok(value)
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `key: value` lines for the scalar fields of an object.
fn print_fields(v: &Value) {
    let nested = |val: &Value| match val {
        Value::Object(_) => true,
        Value::Array(a) => a.iter().any(Value::is_object),
        _ => false,
    };
    if let Some(o) = v.as_object() {
        for (k, val) in o.iter().filter(|(_, val)| !nested(val)) {
            println!("{k:<28} {}", s(val));
        }
    }
}

pub fn print_jobs(jobs: &[Value]) {
    println!(
        "{:<20} {:<11} {:>4} {:>10} {:>7} {:>7} {:>9}  RESTORED FROM",
        "JOB", "STATE", "PAR", "COMPLETED", "FAILED", "LATEST", "RESTARTS"
    );
    for j in jobs {
        println!(
            "{:<20} {:<11} {:>4} {:>10} {:>7} {:>7} {:>9}  {}",
            s(&j["job_id"]),
            s(&j["state"]),
            s(&j["parallelism"]),
            s(&j["checkpoints_completed"]),
            s(&j["checkpoints_failed"]),
            s(&j["latest_completed_checkpoint"]),
            s(&j["restarts"]),
            s(&j["restored_from"]),
        );
    }
}

pub async fn submit(
    c: &Client,
    spec_file: &std::path::Path,
    restore_from: Option<String>,
    as_json: bool,
) -> Result<()> {
    let text = std::fs::read_to_string(spec_file)
        .with_context(|| format!("reading {}", spec_file.display()))?;
    let mut spec: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", spec_file.display()))?;
    if let Some(r) = restore_from {
        spec["restore_from"] = match r.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => json!(r),
        };
    }
    let job = c.call(Method::POST, "/v1/jobs", Some(spec)).await?;
    if as_json {
        return print_json(&job);
    }
    println!("submitted job {} ({})", s(&job["job_id"]), s(&job["state"]));
    Ok(())
}

pub async fn jobs_list(c: &Client, as_json: bool) -> Result<()> {
    let v = c.call(Method::GET, "/v1/jobs", None).await?;
    if as_json {
        return print_json(&v);
    }
    print_jobs(v["jobs"].as_array().map(Vec::as_slice).unwrap_or(&[]));
    Ok(())
}

pub async fn job_show(c: &Client, job: &str, as_json: bool) -> Result<()> {
    let v = c
        .call(Method::GET, &format!("/v1/jobs/{job}"), None)
        .await?;
    if as_json {
        return print_json(&v);
    }
    print_fields(&v);
    if v["result"].is_object() {
        println!("result:");
        print_fields(&v["result"]);
    }
    Ok(())
}

pub async fn job_cancel(c: &Client, job: &str, as_json: bool) -> Result<()> {
    let v = c
        .call(Method::POST, &format!("/v1/jobs/{job}/cancel"), None)
        .await?;
    if as_json {
        return print_json(&v);
    }
    println!("job {job}: {}", s(&v["result"]["state"]));
    Ok(())
}

pub async fn trigger(
    c: &Client,
    job: &str,
    checkpoint_type: Option<String>,
    wait: bool,
    as_json: bool,
) -> Result<()> {
    let body = checkpoint_type
        .map(|t| json!({ "type": t }))
        .unwrap_or(json!({}));
    let v = c
        .call(
            Method::POST,
            &format!("/v1/jobs/{job}/checkpoints"),
            Some(body),
        )
        .await?;
    let id = v["checkpoint_id"]
        .as_u64()
        .context("no checkpoint_id in the answer")?;
    if !wait {
        if as_json {
            return print_json(&v);
        }
        println!("triggered checkpoint {id} of job {job}");
        return Ok(());
    }
    loop {
        let d = c
            .call(
                Method::GET,
                &format!("/v1/jobs/{job}/checkpoints/{id}"),
                None,
            )
            .await?;
        if d["status"] != "IN_PROGRESS" {
            if as_json {
                return print_json(&d);
            }
            println!(
                "checkpoint {id}: {} in {} ms, state {} bytes, uploaded {} bytes{}",
                s(&d["status"]),
                s(&d["end_to_end_duration"]),
                s(&d["state_size"]),
                s(&d["checkpointed_size"]),
                d["failure_message"]
                    .as_str()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
            if d["status"] != "COMPLETED" {
                bail!("checkpoint {id} failed");
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn checkpoint_show(c: &Client, job: &str, id: u64, as_json: bool) -> Result<()> {
    let v = c
        .call(
            Method::GET,
            &format!("/v1/jobs/{job}/checkpoints/{id}"),
            None,
        )
        .await?;
    if as_json {
        return print_json(&v);
    }
    print_fields(&v);
    if let Some(tasks) = v["tasks"].as_object() {
        println!(
            "{:<8} {:>8} {:>12} {:>12} {:>8} {:>8} {:>10}",
            "TASK", "SUBTASK", "STATE", "UPLOADED", "SYNC ms", "ASYNC ms", "ALIGN ms"
        );
        for (op, t) in tasks {
            for st in t["subtasks"].as_array().into_iter().flatten() {
                println!(
                    "{:<8} {:>8} {:>12} {:>12} {:>8} {:>8} {:>10}",
                    op,
                    s(&st["task"]["subtask"]),
                    s(&st["state_size"]),
                    s(&st["checkpointed_size"]),
                    s(&st["sync_duration_ms"]),
                    s(&st["async_duration_ms"]),
                    s(&st["alignment_duration_ms"]),
                );
            }
        }
    }
    Ok(())
}

pub async fn checkpoint_delete(c: &Client, job: &str, id: u64, force: bool) -> Result<()> {
    let q = if force { "?force=true" } else { "" };
    c.call(
        Method::DELETE,
        &format!("/v1/jobs/{job}/checkpoints/{id}{q}"),
        None,
    )
    .await?;
    println!("deleted checkpoint {id} of job {job}");
    Ok(())
}

/// Rows of `GET /v1/storage/jobs/{job}/checkpoints` for one or all jobs.
pub async fn storage_rows(c: &Client, job: Option<&str>) -> Result<Vec<Value>> {
    let jobs: Vec<String> = match job {
        Some(j) => vec![j.to_string()],
        None => c.call(Method::GET, "/v1/storage/jobs", None).await?["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j.as_str().map(str::to_string))
            .collect(),
    };
    let mut rows = Vec::new();
    for j in jobs {
        let v = c
            .call(
                Method::GET,
                &format!("/v1/storage/jobs/{j}/checkpoints"),
                None,
            )
            .await?;
        rows.extend(v["checkpoints"].as_array().into_iter().flatten().cloned());
    }
    Ok(rows)
}

pub async fn restore(c: &Client, job: &str, checkpoint: &str, as_json: bool) -> Result<()> {
    let body = match (
        checkpoint.strip_prefix("savepoint:"),
        checkpoint.parse::<u64>(),
    ) {
        (Some(savepoint), _) => json!({ "savepoint_id": savepoint }),
        (None, Ok(n)) => json!({ "checkpoint_id": n }),
        (None, Err(_)) => json!({ "checkpoint_id": checkpoint }),
    };
    let v = c
        .call(Method::POST, &format!("/v1/jobs/{job}/restore"), Some(body))
        .await?;
    if as_json {
        return print_json(&v);
    }
    println!(
        "job {job} restarted from checkpoint {}",
        s(&v["restoring_from"])
    );
    Ok(())
}
