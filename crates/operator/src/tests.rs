//! A fraud-detection-style keyed function with value, list and map state,
//! run through snapshots, a crash and a restore (also rescaled), against an
//! independent computation written plainly below.

use std::collections::HashMap;

use cutpoint_core::{Key, KeyGroupRange};
use cutpoint_state::layout::StateKind;
use cutpoint_state::RocksStore;

use super::*;

const MAXP: u32 = 128;

#[derive(Debug, Clone)]
struct Payment {
    account: i64,
    merchant: String,
    amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Alert {
    /// Larger than the sum of the account's previous three payments.
    Spike { account: i64, amount: i64 },
    /// The account's total at one merchant crossed 1000.
    MerchantTotal { account: i64, merchant: String },
}

fn desc(name: &str, kind: StateKind) -> StateDescriptor {
    StateDescriptor {
        name: name.into(),
        kind,
        codec_version: 1,
        ttl: None,
    }
}

struct FraudDetector {
    balance: StateDescriptor,
    recent: StateDescriptor,
    per_merchant: StateDescriptor,
}

impl FraudDetector {
    fn new() -> Self {
        Self {
            balance: desc("balance", StateKind::Value),
            recent: desc("recent", StateKind::List),
            per_merchant: desc("per_merchant", StateKind::Map),
        }
    }
}

impl KeyedProcessFunction for FraudDetector {
    type In = Payment;
    type Out = Alert;

    fn states(&self) -> Vec<StateDescriptor> {
        vec![
            self.balance.clone(),
            self.recent.clone(),
            self.per_merchant.clone(),
        ]
    }

    fn process(
        &mut self,
        p: Payment,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<Alert>,
    ) -> Result<(), OperatorError> {
        let balance: i64 = ctx.value(&self.balance)?.unwrap_or(0);
        ctx.set_value(&self.balance, &(balance - p.amount))?;
        let recent: Vec<i64> = ctx.list(&self.recent)?;
        if recent.len() == 3 && p.amount > recent.iter().sum::<i64>() {
            out.push(Alert::Spike {
                account: p.account,
                amount: p.amount,
            });
        }
        // Keep the last three amounts.
        ctx.clear(&self.recent)?;
        for a in recent.iter().skip(recent.len().saturating_sub(2)) {
            ctx.list_add(&self.recent, a)?;
        }
        ctx.list_add(&self.recent, &p.amount)?;
        let before: i64 = ctx.map_get(&self.per_merchant, &p.merchant)?.unwrap_or(0);
        let after = before + p.amount;
        ctx.map_put(&self.per_merchant, &p.merchant, &after)?;
        if before <= 1000 && after > 1000 {
            out.push(Alert::MerchantTotal {
                account: p.account,
                merchant: p.merchant,
            });
        }
        Ok(())
    }
}

/// A deterministic stream of payments.
fn payments(n: usize) -> Vec<Payment> {
    let mut x: u64 = 42;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..n)
        .map(|_| Payment {
            account: (next() % 300) as i64,
            merchant: format!("m{}", next() % 5),
            amount: 1 + (next() % 100) as i64 * if next() % 40 == 0 { 20 } else { 1 },
        })
        .collect()
}

/// The same rules, computed plainly: per account, the last three amounts
/// and the totals per merchant.
fn expected_alerts(ps: &[Payment]) -> Vec<Alert> {
    let mut recent: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut totals: HashMap<(i64, String), i64> = HashMap::new();
    let mut alerts = Vec::new();
    for p in ps {
        let r = recent.entry(p.account).or_default();
        if r.len() == 3 && p.amount > r.iter().sum::<i64>() {
            alerts.push(Alert::Spike {
                account: p.account,
                amount: p.amount,
            });
        }
        r.push(p.amount);
        if r.len() > 3 {
            r.remove(0);
        }
        let t = totals.entry((p.account, p.merchant.clone())).or_insert(0);
        if *t <= 1000 && *t + p.amount > 1000 {
            alerts.push(Alert::MerchantTotal {
                account: p.account,
                merchant: p.merchant.clone(),
            });
        }
        *t += p.amount;
    }
    alerts
}

fn operator() -> KeyedOperator<FraudDetector> {
    KeyedOperator::new(
        FraudDetector::new(),
        |p: &Payment| Key::Int(p.account),
        MAXP,
    )
    .unwrap()
}

fn store(dir: &std::path::Path) -> RocksStore {
    RocksStore::open(&dir.join("db"), &dir.join("scratch"), MAXP).unwrap()
}

fn key_group(account: i64) -> u32 {
    cutpoint_core::keygroup::key_group(Key::Int(account).stable_hash(), MAXP)
}

/// Snapshots every 1,000 records into RocksDB, crashes at 12,345 (the
/// outputs since the last snapshot are lost with it), restores from
/// RocksDB and replays from the snapshot's offset: the alerts are exactly
/// those of the plain computation.
#[test]
fn a_restored_operator_continues_exactly() {
    let ps = payments(20_000);
    let dir = tempfile::tempdir().unwrap();
    let mut db = store(dir.path());
    let mut op = operator();
    let (mut committed, mut pending) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for (i, p) in ps.iter().enumerate().take(12_345) {
        op.process(p.clone(), &mut pending).unwrap();
        if (i + 1) % 1000 == 0 {
            db.apply_entries(&op.snapshot()).unwrap();
            committed.append(&mut pending);
            offset = i + 1;
        }
    }
    drop((op, pending));
    let mut op = operator();
    let all = KeyGroupRange {
        start: 0,
        end: MAXP - 1,
    };
    db.scan_raw(all, |k, v| {
        op.restore_entry(k, v).unwrap();
        Ok(())
    })
    .unwrap();
    for p in &ps[offset..] {
        op.process(p.clone(), &mut committed).unwrap();
    }
    let want = expected_alerts(&ps);
    assert!(want.len() > 50, "the test sees alerts: {}", want.len());
    assert_eq!(committed, want);
}

/// Two subtasks (key groups 0..=63 and 64..=127), each with its own
/// RocksDB, snapshot at 8,000 records; the job is rescaled to one subtask
/// that loads both ranges and processes the rest: exact again.
#[test]
fn a_rescaled_restore_continues_exactly() {
    let ps = payments(16_000);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut stores: Vec<RocksStore> = dirs.iter().map(|d| store(d.path())).collect();
    let mut ops = [operator(), operator()];
    let mut out = Vec::new();
    for p in &ps[..8_000] {
        let subtask = (key_group(p.account) >= 64) as usize;
        op_process(&mut ops[subtask], p, &mut out);
    }
    for (op, db) in ops.iter_mut().zip(&mut stores) {
        db.apply_entries(&op.snapshot()).unwrap();
    }
    let mut one = operator();
    let all = KeyGroupRange {
        start: 0,
        end: MAXP - 1,
    };
    for db in &stores {
        db.scan_raw(all, |k, v| {
            one.restore_entry(k, v).unwrap();
            Ok(())
        })
        .unwrap();
    }
    for p in &ps[8_000..] {
        op_process(&mut one, p, &mut out);
    }
    // Subtasks interleave their outputs differently: compare as sets.
    let mut want = expected_alerts(&ps);
    want.sort();
    out.sort();
    assert_eq!(out, want);
}

fn op_process(op: &mut KeyedOperator<FraudDetector>, p: &Payment, out: &mut Vec<Alert>) {
    op.process(p.clone(), out).unwrap();
}

/// The state names of every entry RocksDB holds after the operator's
/// snapshot is written.
pub(crate) fn stored_states<F: KeyedProcessFunction>(op: &mut KeyedOperator<F>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut db = RocksStore::open(&dir.path().join("db"), &dir.path().join("s"), MAXP).unwrap();
    db.apply_entries(&op.snapshot()).unwrap();
    let declared = op.table.names().declared();
    let mut names = Vec::new();
    let all = KeyGroupRange {
        start: 0,
        end: MAXP - 1,
    };
    db.scan_raw(all, |k, _| {
        let id = u16::from_be_bytes([k[2], k[3]]);
        let d = declared.iter().find(|d| d.id == id).unwrap();
        names.push(d.name.clone());
        Ok(())
    })
    .unwrap();
    names
}
