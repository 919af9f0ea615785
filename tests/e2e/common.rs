//! Helpers shared by the end-to-end tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cutpoint_coordinator::JobOutcome;
use cutpoint_core::{JobSpec, Key};
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
    o.final_state
        .iter()
        .flat_map(|t| t.iter().map(|(k, v)| (k.clone(), *v)))
        .collect()
}

/// Asserts every key's count equals the expectation.
pub fn assert_exact(actual: &BTreeMap<Key, i64>, expected: &BTreeMap<Key, i64>) {
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .take(5)
        .map(|(k, v)| format!("{k}: expected {v}, got {:?}", actual.get(k)))
        .collect();
    assert!(wrong.is_empty(), "wrong counts: {wrong:?}");
    assert_eq!(actual.len(), expected.len(), "unexpected extra keys");
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
