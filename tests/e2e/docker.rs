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
    let dockerfile = include_str!("../../docker/Dockerfile");
    for needle in [
        "USER cutpoint",
        "HEALTHCHECK",
        "/healthz",
        "libclang-dev",
        "FROM debian:bookworm-slim",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
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
