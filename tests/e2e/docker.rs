//! The docker/ files, checked without a Docker engine (none runs on the
//! team's machines): the compose file parses and wires MinIO, the bucket,
//! cutpoint on S3, the job submission and Prometheus; the image's command
//! runs with the image's configuration file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cutpoint");

#[test]
fn compose_file_wires_minio_cutpoint_and_prometheus() {
    let compose: Value = serde_norway::from_str(include_str!("../../docker/compose.yaml")).unwrap();
    let services = compose["services"].as_object().unwrap();
    for s in [
        "minio",
        "create-bucket",
        "cutpoint",
        "submit-pv-job",
        "prometheus",
    ] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    let env = &services["cutpoint"]["environment"];
    assert_eq!(env["AWS_ENDPOINT_URL"], "http://minio:9000");
    assert!(env["CUTPOINT_CHECKPOINT_DIR"]
        .as_str()
        .unwrap()
        .starts_with("s3://checkpoints/"));
    assert!(services["create-bucket"]["entrypoint"][2]
        .as_str()
        .unwrap()
        .contains("mc mb --ignore-existing local/checkpoints"));
    assert_eq!(
        services["cutpoint"]["depends_on"]["create-bucket"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(
        services["submit-pv-job"]["depends_on"]["cutpoint"]["condition"],
        "service_healthy"
    );
    let prom: Value = serde_norway::from_str(include_str!("../../docker/prometheus.yml")).unwrap();
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "cutpoint:8080"
    );
}

/// The Dockerfile's instructions, continuation lines joined: (keyword,
/// arguments), in order.
fn dockerfile() -> Vec<(String, String)> {
    let text = include_str!("../../docker/Dockerfile").replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, rest) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

/// The last stage of the Dockerfile (the runtime image).
fn runtime_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let last_from = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    all[last_from..].to_vec()
}

#[test]
fn the_runtime_image_is_slim_non_root_and_has_what_its_healthcheck_runs() {
    let stage = runtime_stage();
    let get = |k: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(get("FROM"), vec!["debian:bookworm-slim"]);
    assert_eq!(get("USER"), vec!["cutpoint"]);
    let installs = get("RUN").join(" ");
    assert!(
        installs.contains("useradd") && installs.contains(" cutpoint"),
        "{installs}"
    );
    // The healthcheck runs curl: the runtime stage installs it.
    let health = get("HEALTHCHECK");
    assert_eq!(health.len(), 1, "{health:?}");
    assert!(health[0].contains("CMD curl"), "{health:?}");
    assert!(
        installs.contains("curl"),
        "curl is not installed: {installs}"
    );
    // The image's command is the config it copies in.
    let copies = get("COPY").join("\n");
    assert!(copies.contains("docker/cutpoint.toml /etc/cutpoint/cutpoint.toml"));
    assert_eq!(
        get("CMD"),
        vec![r#"["serve", "--config", "/etc/cutpoint/cutpoint.toml"]"#]
    );
    // The build stage installs what the rocksdb crate's build needs.
    let build = dockerfile()
        .into_iter()
        .find(|(k, v)| k == "RUN" && v.contains("apt-get"))
        .unwrap();
    for pkg in ["libclang-dev", "g++", "make"] {
        assert!(build.1.contains(pkg), "the build stage lacks {pkg}");
    }
}

/// The HEALTHCHECK command, run as written against a server started with
/// the image's configuration: healthy while it runs, unhealthy once it is
/// gone (only the address differs: a free port instead of 8080).
#[test]
fn the_healthcheck_command_tells_a_running_server_from_a_stopped_one() {
    let health = runtime_stage()
        .into_iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .unwrap()
        .1;
    let cmd = health.split_once("CMD ").unwrap().1.to_string();
    assert!(cmd.contains("http://127.0.0.1:8080/healthz"), "{cmd}");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/cutpoint.toml");
    let config_text = std::fs::read_to_string(config).unwrap();
    assert!(
        config_text.contains("0.0.0.0:8080"),
        "the healthcheck's port is the image's"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config])
        .env("CUTPOINT_TOKEN", "t")
        .env("CUTPOINT_LISTEN", "127.0.0.1:0")
        .env("CUTPOINT_CHECKPOINT_DIR", dir.path().join("chk"))
        .env("CUTPOINT_WORK_DIR", dir.path().join("work"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = serde_json::from_str::<Value>(&line).unwrap()["listening"]
        .as_str()
        .unwrap()
        .to_string();
    let check = cmd.replace("127.0.0.1:8080", &addr);
    let run = || {
        Command::new("sh")
            .arg("-c")
            .arg(&check)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(run().success(), "unhealthy while running: {check}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !run().success(),
        "healthy after the server stopped: {check}"
    );
}

#[test]
fn image_command_runs_with_the_image_config() {
    // The image runs `cutpoint serve --config /etc/cutpoint/cutpoint.toml`;
    // run the same with the file from the repository, overriding only what
    // must differ outside a container (address and directories).
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/cutpoint.toml");
    let show = Command::new(BIN)
        .args(["config", "show", "--config", config])
        .env("CUTPOINT_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("0.0.0.0:8080") && !shown.contains("\"t\""),
        "{shown}"
    );
    // Without a token the container's non-loopback address is refused.
    let refused = Command::new(BIN)
        .args(["serve", "--config", config])
        .env_remove("CUTPOINT_TOKEN")
        .env("CUTPOINT_CHECKPOINT_DIR", dir.path().join("chk"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config])
        .env("CUTPOINT_TOKEN", "t")
        .env("CUTPOINT_LISTEN", "127.0.0.1:0")
        .env("CUTPOINT_CHECKPOINT_DIR", dir.path().join("chk"))
        .env("CUTPOINT_WORK_DIR", dir.path().join("work"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening"), "{line}");
}
