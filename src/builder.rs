//! [`JobBuilder`]: a job written in Rust —
//! `source(…).key_by(…).process(name, MyFn::new).sink(…)` — built into the
//! same [`JobSpec`] a JSON job is (so it is validated, stored beside its
//! checkpoints, listed and restored the same way), plus the [`Functions`]
//! it registers, as a [`Program`] for [`crate::main_with`].
//!
//! Stateless steps run in the source task: `filter` on the events' fields
//! first, then the Rust closures of `map`, `filter_with` and `flat_map` on
//! the records the source projected (a key and a [`cutpoint_core::Value`]),
//! in the order they were added; a `map` may change the key, and records
//! are routed to the keyed operator by the key the last step leaves.

use std::time::Duration;

use cutpoint_core::filter::{Filter, FilterOp, FilterValue};
use cutpoint_core::spec::{
    AggregateSpec, CheckpointingMode, SinkSpec, Sinks, SourceSpec, Transform,
};
use cutpoint_core::time::EventTimeSpec;
use cutpoint_core::window::WindowSpec;
use cutpoint_core::{CoreError, FunctionName, JobSpec, Record};
use cutpoint_operator::{Functions, WithResult};

use crate::Program;

/// Builds a job and the program that runs it.
pub struct JobBuilder {
    job_id: String,
    source: SourceSpec,
    parallelism: Option<u32>,
    key_by: String,
    filters: Vec<Filter>,
    transforms: Vec<Transform>,
    event_time: Option<EventTimeSpec>,
    window: Option<WindowSpec>,
    aggregate: Option<AggregateSpec>,
    function: Option<String>,
    value: Option<String>,
    sinks: Vec<SinkSpec>,
    interval: Option<Duration>,
    mode: CheckpointingMode,
    functions: Functions,
}

impl JobBuilder {
    /// A job `job_id` reading `source`.
    pub fn source(job_id: &str, source: SourceSpec) -> Self {
        Self {
            job_id: job_id.into(),
            source,
            parallelism: None,
            key_by: String::new(),
            filters: Vec::new(),
            transforms: Vec::new(),
            event_time: None,
            window: None,
            aggregate: None,
            function: None,
            value: None,
            sinks: Vec::new(),
            interval: None,
            mode: CheckpointingMode::default(),
            functions: Functions::new(),
        }
    }

    /// Parallelism of the keyed operator (and its sink).
    pub fn parallelism(mut self, n: u32) -> Self {
        self.parallelism = Some(n);
        self
    }

    /// Keeps only the events whose `field` meets `op value` (checked in
    /// the source task; a missing field does not).
    pub fn filter(mut self, field: &str, op: FilterOp, value: impl Into<FilterValue>) -> Self {
        self.filters.push(Filter::new(field, op, value));
        self
    }

    /// Maps every record with `f`, registered as `name` (the name a JSON
    /// spec's `transforms` know it by). Panics on an invalid or taken name.
    pub fn map(mut self, name: &str, f: impl Fn(Record) -> Record + Send + Sync + 'static) -> Self {
        self.functions = self.functions.map(name, f);
        self.transforms.push(Transform::Map(Self::name(name)));
        self
    }

    /// Keeps the records `f` accepts (a filter written in Rust).
    pub fn filter_with(
        mut self,
        name: &str,
        f: impl Fn(&Record) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.functions = self.functions.filter(name, f);
        self.transforms.push(Transform::Filter(Self::name(name)));
        self
    }

    /// Replaces every record with those `f` pushes (any number).
    pub fn flat_map(
        mut self,
        name: &str,
        f: impl Fn(Record, &mut Vec<Record>) + Send + Sync + 'static,
    ) -> Self {
        self.functions = self.functions.flat_map(name, f);
        self.transforms.push(Transform::FlatMap(Self::name(name)));
        self
    }

    /// A name `Functions` accepted (so valid).
    fn name(name: &str) -> FunctionName {
        FunctionName::new(name).expect("checked when registered")
    }

    /// Event time from `field` (integer milliseconds), with watermarks
    /// trailing each partition's largest event time by `max_out_of_orderness`.
    pub fn event_time(mut self, field: &str, max_out_of_orderness: Duration) -> Self {
        let spec = self.time();
        spec.field = field.into();
        spec.max_out_of_orderness_ms = max_out_of_orderness.as_millis() as u64;
        self
    }

    /// A partition that reads nothing for `timeout` stops holding the
    /// watermark back until it reads again (without
    /// [`JobBuilder::event_time`], `build` says the event time field is
    /// missing).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.time().idle_timeout_ms = Some(timeout.as_millis().max(1) as u64);
        self
    }

    /// Aggregates per key and event-time window: tumbling, sliding or
    /// session (needs [`JobBuilder::event_time`] and a count, sum, min,
    /// max, avg, count-distinct or top-n). Without
    /// [`JobBuilder::key_by`], a global window over all records.
    pub fn window(mut self, window: WindowSpec) -> Self {
        self.window = Some(window);
        self
    }

    fn time(&mut self) -> &mut EventTimeSpec {
        self.event_time.get_or_insert_with(|| EventTimeSpec {
            field: String::new(),
            max_out_of_orderness_ms: 0,
            idle_timeout_ms: None,
            watermark_interval_ms: 200,
        })
    }

    /// The field records are keyed (and partitioned) by.
    pub fn key_by(mut self, field: &str) -> Self {
        self.key_by = field.into();
        self
    }

    /// The field whose value (any value: integer, string, list, null) each
    /// record carries to the keyed function (1 per event if not set).
    pub fn value(mut self, field: &str) -> Self {
        self.value = Some(field.into());
        self
    }

    /// Runs keyed process function `make()` (one per subtask), registered
    /// as `name` (the name its checkpoints and a JSON spec know it by).
    pub fn process<F>(mut self, name: &str, make: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: WithResult + 'static,
    {
        self.functions = self.functions.register(name, make);
        self.function = Some(name.into());
        self
    }

    /// A built-in keyed aggregate instead of a function.
    pub fn aggregate(mut self, aggregate: AggregateSpec) -> Self {
        self.aggregate = Some(aggregate);
        self
    }

    /// Adds a sink: every update of the keyed operator goes to each sink
    /// added (fan-out), in order — called twice, the job has two sinks;
    /// none added: updates are discarded.
    pub fn sink(mut self, sink: SinkSpec) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Periodic checkpoints every `interval`.
    pub fn checkpoint_every(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    pub fn checkpoint_mode(mut self, mode: CheckpointingMode) -> Self {
        self.mode = mode;
        self
    }

    /// The validated job and the functions it runs.
    pub fn build(self) -> Result<Program, CoreError> {
        let aggregate = match (self.function, self.aggregate) {
            (Some(f), None) => AggregateSpec::Process {
                function: FunctionName::new(f)?,
                field: self.value,
            },
            (None, Some(a)) => a,
            (None, None) => AggregateSpec::Count,
            (Some(_), Some(_)) => {
                return Err(CoreError::InvalidSpec(
                    "a job runs either a process function or a built-in aggregate".into(),
                ))
            }
        };
        let sink = match self.sinks.len() {
            0 => Sinks::default(),
            _ => Sinks::new(self.sinks),
        };
        let json = serde_json::json!({
            "job_id": self.job_id,
            "source": self.source,
            "filter": self.filters,
            "transforms": self.transforms,
            "key_by": (!self.key_by.is_empty()).then_some(&self.key_by),
            "aggregate": aggregate,
            "sink": sink,
        });
        let mut spec: JobSpec =
            serde_json::from_value(json).map_err(|e| CoreError::InvalidSpec(e.to_string()))?;
        if let Some(p) = self.parallelism {
            spec.parallelism = p;
        }
        spec.checkpoint.interval_ms = self.interval.map(|d| d.as_millis().max(1) as u64);
        spec.checkpoint.mode = self.mode;
        spec.event_time = self.event_time;
        spec.window = self.window;
        spec.validate()?;
        Ok(Program {
            job: Some(spec),
            functions: self.functions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutpoint_core::{Key, Record, Value};
    use cutpoint_operator::{KeyedContext, KeyedProcessFunction, OperatorError, StateDescriptor};

    struct Last(StateDescriptor);

    impl KeyedProcessFunction for Last {
        type In = Record;
        type Out = (Key, Value);
        fn states(&self) -> Vec<StateDescriptor> {
            vec![self.0.clone()]
        }
        fn process(
            &mut self,
            r: Record,
            ctx: &mut KeyedContext<'_>,
            out: &mut Vec<(Key, Value)>,
        ) -> Result<(), OperatorError> {
            ctx.set_value(&self.0, &r.value)?;
            out.push((r.key, r.value));
            Ok(())
        }
    }

    impl WithResult for Last {
        type Result = Value;

        fn result_state(&self) -> &StateDescriptor {
            &self.0
        }
    }

    fn last() -> Last {
        Last(StateDescriptor::value("last"))
    }

    fn generator() -> SourceSpec {
        SourceSpec::Generator {
            partitions: 1,
            events: 1000,
            keys: 10,
            seed: 1,
            users: 5,
            rate_per_s: None,
            disorder_ms: 0,
        }
    }

    #[test]
    fn builds_the_spec_a_json_job_would_have_and_registers_the_function() {
        let program = JobBuilder::source("last-amount", generator())
            .parallelism(2)
            .key_by("app_id")
            .value("amount")
            .filter("amount", FilterOp::Ge, 500)
            .process("last", last)
            .checkpoint_every(Duration::from_millis(250))
            .build()
            .unwrap();
        let spec = program.job.unwrap();
        let json = r#"{"job_id":"last-amount","parallelism":2,
            "source":{"type":"generator","partitions":1,"events":1000,"keys":10,"seed":1,"users":5},
            "filter":[{"field":"amount","op":"ge","value":500}],
            "key_by":"app_id","aggregate":{"type":"process","function":"last","field":"amount"},
            "checkpoint":{"interval_ms":250}}"#;
        assert_eq!(spec, JobSpec::from_json(json).unwrap());
        let names: Vec<String> = program
            .functions
            .names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, vec!["last"]);
        program.functions.check(&spec).unwrap();
    }

    #[test]
    fn a_windowed_job_builds_the_spec_a_json_job_would_have() {
        let source = SourceSpec::Generator {
            partitions: 1,
            events: 1000,
            keys: 10,
            seed: 1,
            users: 5,
            rate_per_s: None,
            disorder_ms: 20,
        };
        let program = JobBuilder::source("per-second", source.clone())
            .key_by("app_id")
            .event_time("ts", Duration::from_millis(20))
            .idle_timeout(Duration::from_secs(5))
            .window(WindowSpec::Tumbling {
                size_ms: 1000,
                allowed_lateness_ms: 0,
                time: cutpoint_core::window::WindowTime::Event,
            })
            .aggregate(AggregateSpec::Count)
            .checkpoint_every(Duration::from_secs(1))
            .build()
            .unwrap();
        let json = r#"{"job_id":"per-second",
            "source":{"type":"generator","partitions":1,"events":1000,"keys":10,"seed":1,"users":5,"disorder_ms":20},
            "key_by":"app_id","aggregate":{"type":"count"},
            "event_time":{"field":"ts","max_out_of_orderness_ms":20,"idle_timeout_ms":5000},
            "window":{"type":"tumbling","size_ms":1000}}"#;
        assert_eq!(program.job.unwrap(), JobSpec::from_json(json).unwrap());
        let no_time = JobBuilder::source("t", source)
            .key_by("app_id")
            .idle_timeout(Duration::from_secs(1))
            .build();
        let e = no_time.err().unwrap().to_string();
        assert!(e.contains("event_time.field"), "{e}");
    }

    #[test]
    fn rust_steps_become_the_specs_transforms_in_order() {
        let program = JobBuilder::source("steps", generator())
            .key_by("app_id")
            .flat_map("twice", |r, out| {
                out.push(r.clone());
                out.push(r);
            })
            .filter_with("odd", |r| matches!(r.key, Key::Int(k) if k % 2 == 1))
            .map("rekey", |r| Record::new(Key::Int(0), r.value))
            .build()
            .unwrap();
        let spec = program.job.unwrap();
        let json = r#"{"job_id":"steps",
            "source":{"type":"generator","partitions":1,"events":1000,"keys":10,"seed":1,"users":5},
            "transforms":[{"flat_map":"twice"},{"filter":"odd"},{"map":"rekey"}],
            "key_by":"app_id","aggregate":{"type":"count"},
            "checkpoint":{"interval_ms":null}}"#;
        assert_eq!(spec, JobSpec::from_json(json).unwrap());
        program.functions.check(&spec).unwrap();
        let mut steps = program.functions.steps(&spec.transforms).unwrap();
        let mut batch = vec![Record::int(Key::Int(1), 5), Record::int(Key::Int(2), 6)];
        steps.apply(&mut batch);
        assert_eq!(batch, vec![Record::int(Key::Int(0), 5); 2]);
        // The stock binary has none of them: refused, naming the step.
        let err = Functions::new().check(&spec).unwrap_err().to_string();
        assert!(err.contains("flat_map") && err.contains("twice"), "{err}");
    }

    #[test]
    fn refuses_what_a_json_spec_would_refuse() {
        let err = JobBuilder::source("bad", generator())
            .key_by("user")
            .process("last", last)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("key_by"), "{err}");
        let both = JobBuilder::source("both", generator())
            .key_by("app_id")
            .process("last", last)
            .aggregate(AggregateSpec::Count)
            .build();
        assert!(both.is_err());
    }
}
