//! Stateless steps: the `map`, `filter` and `flat_map` functions a Rust
//! program registers by name ([`crate::functions::Functions::map`] and its
//! siblings) and a job's `transforms` name ([`cutpoint_core::spec::Transform`]),
//! resolved into [`Steps`], which the source task runs on every batch (a
//! job's `transforms`) and a keyed task on each update it sends to the
//! next stage (that stage's `transforms`).
//!
//! Invariants: steps keep no state (a checkpoint holds nothing of them)
//! and run in the order the job lists them; records keep their order
//! through every step (a flat map's outputs take its input's place); a
//! map's or flat map's output keeps its input's event time unless the
//! function set one.

use std::fmt;
use std::sync::Arc;

use cutpoint_core::Record;

type MapFn = Arc<dyn Fn(Record) -> Record + Send + Sync>;
type FilterFn = Arc<dyn Fn(&Record) -> bool + Send + Sync>;
type FlatMapFn = Arc<dyn Fn(Record, &mut Vec<Record>) + Send + Sync>;

/// One registered stateless function.
#[derive(Clone)]
pub enum Step {
    /// One record in, one out (it may change the key).
    Map(MapFn),
    /// Keeps the records it returns `true` for.
    Filter(FilterFn),
    /// One record in, any number out (pushed onto the vector).
    FlatMap(FlatMapFn),
}

impl Step {
    /// `map`, `filter` or `flat_map`: the word a job's `transforms` use.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Map(_) => "map",
            Step::Filter(_) => "filter",
            Step::FlatMap(_) => "flat_map",
        }
    }
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// A job's steps, in order (empty: records pass untouched).
#[derive(Clone, Debug, Default)]
pub struct Steps {
    steps: Vec<Step>,
    /// Reused between batches by maps and flat maps.
    spare: Vec<Record>,
}

impl Steps {
    pub fn new(steps: Vec<Step>) -> Self {
        Self {
            steps,
            spare: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs every step over `batch`, in place.
    pub fn apply(&mut self, batch: &mut Vec<Record>) {
        for step in &self.steps {
            match step {
                Step::Filter(keep) => batch.retain(|r| keep(r)),
                Step::Map(f) => {
                    self.spare.clear();
                    self.spare.extend(batch.drain(..).map(|r| {
                        let ts = r.ts;
                        keep_time(f(r), ts)
                    }));
                    std::mem::swap(batch, &mut self.spare);
                }
                Step::FlatMap(f) => {
                    self.spare.clear();
                    for r in batch.drain(..) {
                        let (ts, from) = (r.ts, self.spare.len());
                        f(r, &mut self.spare);
                        for out in &mut self.spare[from..] {
                            if out.ts == Record::NO_TIME {
                                out.ts = ts;
                            }
                        }
                    }
                    std::mem::swap(batch, &mut self.spare);
                }
            }
        }
    }
}

/// A step's output takes its input's event time unless it set its own.
#[inline]
fn keep_time(mut out: Record, ts: i64) -> Record {
    if out.ts == Record::NO_TIME {
        out.ts = ts;
    }
    out
}

#[cfg(test)]
mod tests {
    use cutpoint_core::{Key, Value};

    use super::*;

    fn rec(key: &str, v: i64) -> Record {
        Record::new(Key::from(key), Value::Int(v))
    }

    #[test]
    fn steps_run_in_order_and_keep_record_order() {
        let mut steps = Steps::new(vec![
            Step::FlatMap(Arc::new(|r: Record, out: &mut Vec<Record>| {
                let n = r.int_value().unwrap();
                for i in 0..n {
                    out.push(Record::new(r.key.clone(), Value::Int(i)));
                }
            })),
            Step::Filter(Arc::new(|r: &Record| r.int_value().unwrap() % 2 == 0)),
            Step::Map(Arc::new(|r: Record| {
                let k = format!("{}-{}", r.key, r.int_value().unwrap());
                Record::new(Key::from(k.as_str()), r.value)
            })),
        ]);
        let mut batch = vec![rec("a", 3), rec("b", 0), rec("c", 2)];
        steps.apply(&mut batch);
        let got: Vec<String> = batch.iter().map(|r| r.key.to_string()).collect();
        // a → 0,1,2 → 0,2; b → nothing; c → 0,1 → 0.
        assert_eq!(got, ["a-0", "a-2", "c-0"]);
        // The same steps again on a new batch (the spare vector is reused).
        let mut batch = vec![rec("d", 1)];
        steps.apply(&mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].key, Key::from("d-0"));
    }

    #[test]
    fn outputs_keep_their_inputs_event_time_unless_a_step_sets_one() {
        let mut steps = Steps::new(vec![
            Step::FlatMap(Arc::new(|r: Record, out: &mut Vec<Record>| {
                out.push(Record::new(r.key.clone(), 1));
                out.push(Record::new(r.key.clone(), 2).at(r.ts + 5));
            })),
            Step::Map(Arc::new(|r: Record| Record::new("m", r.value))),
        ]);
        let mut batch = vec![rec("a", 1).at(100), rec("b", 1).at(200)];
        steps.apply(&mut batch);
        let times: Vec<i64> = batch.iter().map(|r| r.ts).collect();
        assert_eq!(times, [100, 105, 200, 205]);
    }

    #[test]
    fn no_steps_leave_the_batch_as_it_is() {
        let mut steps = Steps::default();
        assert!(steps.is_empty());
        let mut batch = vec![rec("a", 1), rec("b", 2)];
        steps.apply(&mut batch);
        assert_eq!(batch, vec![rec("a", 1), rec("b", 2)]);
    }
}
