//! Helpers shared by the end-to-end tests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use cutpoint_coordinator::JobOutcome;
use cutpoint_core::{JobSpec, Key, Value};
use cutpoint_runtime::source::generator_app_id;
use cutpoint_storage::faults::FaultyStore;
use cutpoint_storage::{CheckpointStorage, StorageLocation};

/// Expected PV counts of the generator, computed directly.
pub fn expected_counts(seed: u64, keys: u64, events: u64) -> BTreeMap<Key, i64> {
    let mut m = BTreeMap::new();
    for i in 0..events {
        *m.entry(Key::Int(generator_app_id(seed, keys, i) as i64))
            .or_insert(0) += 1;
    }
    m
}

pub fn final_counts(o: &JobOutcome) -> BTreeMap<Key, i64> {
    let values = o.final_values().into_iter();
    values.map(|(k, v)| (k, int(&v))).collect()
}

/// An update's or result's value, which must be an integer.
pub fn int(v: &Value) -> i64 {
    v.as_int()
        .unwrap_or_else(|| panic!("{v} is not an integer"))
}

/// A key's updates as integers.
pub fn ints(values: &[Value]) -> Vec<i64> {
    values.iter().map(int).collect()
}

/// Asserts every key's count equals the expectation.
pub fn assert_exact(actual: &BTreeMap<Key, i64>, expected: &BTreeMap<Key, i64>) {
    assert_same_entries("counts", actual, expected);
}

/// Asserts `got` holds exactly `want`'s entries (`what` names them; the
/// first few differences are shown).
pub fn assert_same_entries<K: Ord + Debug, V: PartialEq + Debug>(
    what: &str,
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) {
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .take(5)
        .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got.get(k)))
        .collect();
    assert!(wrong.is_empty(), "{} {what}, wrong: {wrong:?}", want.len());
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "{what} that should not be there: {extra:?}"
    );
}

/// A PV spec over generated events.
pub fn pv_spec(job: &str, events: u64, keys: u64, rate: Option<u64>, extra: &str) -> JobSpec {
    let rate = rate
        .map(|r| format!(r#","rate_per_s":{r}"#))
        .unwrap_or_default();
    JobSpec::from_json(&format!(
        r#"{{"job_id":"{job}","parallelism":2,
            "source":{{"type":"generator","partitions":2,"events":{events},"keys":{keys},"seed":42{rate}}},
            "key_by":"app_id","aggregate":{{"type":"count"}}{extra}}}"#
    ))
    .expect("valid spec")
}

/// Local storage in `dir`, wrapped in a fault-injecting store.
pub fn faulty_storage(dir: &Path) -> (CheckpointStorage, Arc<FaultyStore>) {
    let loc = StorageLocation::parse(dir.to_str().unwrap()).unwrap();
    let faulty = FaultyStore::new(loc.store.clone());
    let storage = CheckpointStorage::new(loc.with_store(faulty.clone()));
    (storage, faulty)
}

/// An S3 location for a test, when the test S3 server's environment is set
/// (`scripts/test.sh` starts the project's server). Its absence fails the
/// test unless the user asked to skip S3 explicitly (`CUTPOINT_SKIP_S3=1`),
/// so the test command means the same thing on every machine.
pub fn s3_location(name: &str) -> Option<String> {
    match (
        std::env::var("AWS_ENDPOINT_URL"),
        std::env::var("S3_BUCKET"),
    ) {
        (Ok(_), Ok(bucket)) => Some(format!(
            "s3://{bucket}/{name}-{}",
            uuid::Uuid::new_v4().simple()
        )),
        _ if std::env::var("CUTPOINT_SKIP_S3").as_deref() == Ok("1") => {
            eprintln!("SKIPPED the S3 variant of {name}: CUTPOINT_SKIP_S3=1");
            None
        }
        _ => panic!(
            "the S3 variant of {name} needs AWS_ENDPOINT_URL and S3_BUCKET \
             (scripts/test.sh starts the project's S3 server; CUTPOINT_SKIP_S3=1 skips S3 on purpose)"
        ),
    }
}

/// Local storage always; S3 as well where the test server runs.
pub fn locations(dir: &Path, name: &str) -> Vec<String> {
    let mut v = vec![dir.join(name).display().to_string()];
    v.extend(s3_location(name));
    v
}

pub fn storage_at(location: &str) -> CheckpointStorage {
    CheckpointStorage::new(StorageLocation::parse(location).unwrap())
}

/// Storage holds exactly `job.json` plus, for every completed checkpoint,
/// its `_metadata` and the files it references. Returns the metadata.
pub async fn assert_storage_is_exactly_referenced(
    storage: &CheckpointStorage,
    job: &cutpoint_core::JobId,
) -> Vec<cutpoint_core::CheckpointMetadata> {
    let u = storage.usage(job).await.unwrap();
    assert!(u.unreadable.is_empty(), "every checkpoint verifies: {u:?}");
    assert!(
        u.unreferenced.is_empty() && u.missing.is_empty(),
        "leaked: {:?}\nmissing: {:?}",
        u.unreferenced,
        u.missing
    );
    let mut metas = Vec::new();
    for l in storage.list_checkpoints(job).await.unwrap() {
        metas.push(l.metadata.unwrap());
    }
    metas
}

/// Restores every aggregate subtask of `meta` from storage into fresh
/// directories and checks the state equals the generator's counts up to the
/// checkpoint's source offsets.
pub async fn assert_checkpoint_state(
    storage: &CheckpointStorage,
    meta: &cutpoint_core::CheckpointMetadata,
    keys: u64,
    events: u64,
) {
    use cutpoint_core::metadata::SourceOffset;
    let offsets: Vec<SourceOffset> = meta
        .subtasks
        .iter()
        .filter_map(|s| s.source_offset)
        .collect();
    let partitions = offsets.len() as u32;
    let mut expected = BTreeMap::new();
    for o in &offsets {
        let (start, _) = cutpoint_runtime::source::generator_range(events, partitions, o.partition);
        for i in start..o.offset {
            *expected
                .entry(Key::Int(generator_app_id(42, keys, i) as i64))
                .or_insert(0i64) += 1;
        }
    }
    let aggs: Vec<_> = meta
        .subtasks
        .iter()
        .filter(|s| s.key_group_range.is_some())
        .cloned()
        .collect();
    let (storage, job, maxp) = (storage.clone(), meta.job_id.clone(), meta.max_parallelism);
    let rt = tokio::runtime::Handle::current();
    let actual = tokio::task::spawn_blocking(move || {
        let mut all = BTreeMap::new();
        for s in &aggs {
            let dir = tempfile::tempdir().unwrap();
            let dirs = cutpoint_state::snapshot::LocalDirs {
                db: dir.path().join("db"),
                scratch: dir.path().join("scratch"),
            };
            let restored = cutpoint_state::snapshot::restore(
                &rt,
                &storage,
                &job,
                &aggs,
                s.key_group_range.unwrap(),
                &dirs,
                maxp,
                cutpoint_state::snapshot::TableLoad::Eager,
            )
            .expect("restore");
            all.extend(restored.table.iter().map(|(k, v)| (k.clone(), *v)));
        }
        all
    })
    .await
    .unwrap();
    assert_exact(&actual, &expected);
}
