//! Key groups: the unit in which keyed state is partitioned.
//!
//! A key maps to a key group by a stable hash (`hash % max_parallelism`); a
//! subtask owns a contiguous range of key groups, computed as in Flink
//! (`KeyGroupRangeAssignment`). The hash is stable across processes and
//! builds, so state written by one run lands in the same group when restored,
//! even at another parallelism.

use serde::{Deserialize, Serialize};

/// Inclusive range of key groups `[start, end]` owned by one subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    pub start: u32,
    pub end: u32,
}

impl KeyGroupRange {
    /// The range of `subtask` when `max_parallelism` groups are spread over
    /// `parallelism` subtasks.
    pub fn for_subtask(max_parallelism: u32, parallelism: u32, subtask: u32) -> Self {
        assert!(parallelism > 0 && parallelism <= max_parallelism && subtask < parallelism);
        let start = (subtask * max_parallelism).div_ceil(parallelism);
        let end = ((subtask + 1) * max_parallelism).div_ceil(parallelism) - 1;
        Self { start, end }
    }

    pub fn contains(&self, group: u32) -> bool {
        self.start <= group && group <= self.end
    }

    pub fn intersects(&self, other: &KeyGroupRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// The key group of a key hash.
#[inline]
pub fn key_group(hash: u64, max_parallelism: u32) -> u32 {
    (hash % max_parallelism as u64) as u32
}

/// The subtask that owns `group` (inverse of [`KeyGroupRange::for_subtask`]).
#[inline]
pub fn subtask_for_group(group: u32, max_parallelism: u32, parallelism: u32) -> u32 {
    group * parallelism / max_parallelism
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_groups_and_match_owner() {
        for (max, p) in [(128, 1), (128, 2), (128, 3), (128, 7), (10, 10)] {
            let mut next = 0;
            for s in 0..p {
                let r = KeyGroupRange::for_subtask(max, p, s);
                assert_eq!(r.start, next);
                for g in r.start..=r.end {
                    assert_eq!(subtask_for_group(g, max, p), s, "max={max} p={p} g={g}");
                }
                next = r.end + 1;
            }
            assert_eq!(next, max);
        }
    }
}
