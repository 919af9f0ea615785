//! A fraud-detection job written in Rust on cutpoint's operator API: a
//! keyed process function with value, map and list state per account,
//! run with the whole `cutpoint` command line (checkpoints, restore by id,
//! the REST API).
//!
//! Rule: a large payment (amount ≥ 800) right after a small one (< 100),
//! in an amount band (amount / 100) the account has used for at most a
//! tenth of its payments so far, is flagged. On a flag the job emits
//! `(account, risk)`, the risk being the sum of the account's flagged
//! amounts. State per account:
//! - `payments` (ValueState<i64>): payments seen — the job's final state;
//! - `last_small` (ValueState<bool>): whether the previous one was small;
//! - `bands` (MapState<i64, i64>): payments per amount band;
//! - `flagged` (ListState<i64>): the flagged amounts (appended without
//!   reading the list).
//!
//! Run it (from the repository root):
//!
//! ```text
//! cargo run --release --example fraud_detection -- run --checkpoint-dir /tmp/fraud-chk
//! cargo run --release --example fraud_detection -- run --checkpoint-dir /tmp/fraud-chk --restore-from latest
//! cargo run --release --example fraud_detection -- serve --checkpoint-dir /tmp/fraud-chk
//! ```
//!
//! Its own job reads 2M generated payments of 10,000 accounts and commits
//! the alerts under `fraud-alerts/` (two-phase commit); `run --job
//! spec.json` runs any JSON spec naming `"function": "fraud_detector"`.

use std::process::ExitCode;
use std::time::Duration;

use cutpoint::operator::{
    integer, Key, KeyedContext, KeyedProcessFunction, OperatorError, Record, StateDescriptor,
    Value, WithResult,
};
use cutpoint::{JobBuilder, SinkSpec, SourceSpec};

const SMALL: i64 = 100;
const LARGE: i64 = 800;

struct FraudDetector {
    payments: StateDescriptor,
    last_small: StateDescriptor,
    bands: StateDescriptor,
    flagged: StateDescriptor,
}

impl Default for FraudDetector {
    fn default() -> Self {
        Self {
            payments: StateDescriptor::value("payments"),
            last_small: StateDescriptor::value("last_small"),
            bands: StateDescriptor::map("bands"),
            flagged: StateDescriptor::list("flagged"),
        }
    }
}

impl KeyedProcessFunction for FraudDetector {
    type In = Record;
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        [&self.payments, &self.last_small, &self.bands, &self.flagged]
            .map(Clone::clone)
            .to_vec()
    }

    fn process(
        &mut self,
        payment: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let amount = integer(&payment)?;
        let band = amount / 100;
        let before = ctx.value::<i64>(&self.payments)?.unwrap_or(0);
        let in_band = ctx.map_get::<i64, i64>(&self.bands, &band)?.unwrap_or(0);
        let after_small = ctx.value::<bool>(&self.last_small)?.unwrap_or(false);
        if amount >= LARGE && after_small && in_band * 10 <= before {
            ctx.list_add(&self.flagged, &amount)?;
            let risk: i64 = ctx.list::<i64>(&self.flagged)?.iter().sum();
            out.push((payment.key, Value::Int(risk)));
        }
        ctx.set_value(&self.payments, &(before + 1))?;
        ctx.map_put(&self.bands, &band, &(in_band + 1))?;
        ctx.set_value(&self.last_small, &(amount < SMALL))?;
        Ok(())
    }
}

impl WithResult for FraudDetector {
    type Result = i64;

    fn result_state(&self) -> &StateDescriptor {
        &self.payments
    }
}

fn main() -> ExitCode {
    let payments = SourceSpec::Generator {
        partitions: 1,
        events: 2_000_000,
        keys: 10_000,
        seed: 7,
        users: 1_000,
        rate_per_s: None,
        disorder_ms: 0,
    };
    let program = JobBuilder::source("fraud-detection", payments)
        .parallelism(2)
        .key_by("app_id")
        .value("amount")
        .process("fraud_detector", FraudDetector::default)
        .sink(SinkSpec::TransactionalFile {
            dir: "fraud-alerts".into(),
        })
        .checkpoint_every(Duration::from_millis(500))
        .build()
        .expect("a valid job");
    cutpoint::main_with(program)
}
