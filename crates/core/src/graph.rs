//! The job graph: operators (id, role, parallelism) and the edges between
//! them with their partitioning, validated, and the chains the runtime runs
//! as one task each (pure data, no I/O).
//!
//! Roles: a [`Role::Source`] reads partitions (its parallelism is their
//! number) and has no input; a [`Role::Keyed`] operator keeps keyed state,
//! so every input edge is [`Partitioning::Hash`] (records reach the subtask
//! owning their key group); a [`Role::Stateless`] operator and a
//! [`Role::Sink`] take any partitioning; a sink has no output.
//!
//! Chaining (as Flink does): an operator is chained to its upstream when
//! the edge between them is [`Partitioning::Forward`], both have the same
//! parallelism, the edge is the upstream's only output and the operator's
//! only input. A chain runs as one task per subtask (one thread); every
//! other edge is an exchange between tasks, where barriers are aligned.
//!
//! Invariants of a graph [`JobGraph::new`] accepted: operator ids are
//! unique; every edge joins two of its operators; there is no cycle; there
//! is at least one source and every operator is reachable from one;
//! parallelism is within `1..=max_parallelism`; a forward edge joins
//! operators of equal parallelism.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{CoreError, OperatorId};

/// What an operator is, as far as the graph and its checkpoints care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads a replayable input; its offsets are its checkpointed state.
    Source,
    /// Records in, records out, no keyed state (map, filter, flat map).
    Stateless,
    /// Keeps state per key: its inputs are partitioned by key group.
    Keyed,
    /// Writes the job's output; may take part in two-phase commit.
    Sink,
}

/// How records travel along an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Subtask `i` to subtask `i` (equal parallelism).
    Forward,
    /// By the key's key group to the subtask owning it.
    Hash,
    /// Round-robin over the downstream subtasks.
    Rebalance,
    /// Every record to every downstream subtask.
    Broadcast,
}

/// One operator of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub id: OperatorId,
    pub role: Role,
    pub parallelism: u32,
}

/// Records of `from` flow to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: OperatorId,
    pub to: OperatorId,
    pub partitioning: Partitioning,
}

/// Operators run as one task per subtask, upstream first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub operators: Vec<OperatorId>,
    pub parallelism: u32,
}

/// A validated job graph (also when read from JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawGraph")]
pub struct JobGraph {
    operators: Vec<Operator>,
    edges: Vec<Edge>,
    max_parallelism: u32,
}

/// A graph as read, before validation.
#[derive(Deserialize)]
struct RawGraph {
    operators: Vec<Operator>,
    edges: Vec<Edge>,
    max_parallelism: u32,
}

impl TryFrom<RawGraph> for JobGraph {
    type Error = CoreError;

    fn try_from(r: RawGraph) -> Result<Self, CoreError> {
        JobGraph::new(r.operators, r.edges, r.max_parallelism)
    }
}

impl JobGraph {
    /// Validates `operators` and `edges` (see the module's invariants).
    pub fn new(
        operators: Vec<Operator>,
        edges: Vec<Edge>,
        max_parallelism: u32,
    ) -> Result<Self, CoreError> {
        let g = Self {
            operators,
            edges,
            max_parallelism,
        };
        g.check_operators()?;
        g.check_edges()?;
        g.topological_order()?;
        g.check_reachable()?;
        Ok(g)
    }

    pub fn operators(&self) -> &[Operator] {
        &self.operators
    }

    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    pub fn operator(&self, id: &OperatorId) -> Option<&Operator> {
        self.operators.iter().find(|o| &o.id == id)
    }

    pub fn inputs<'a>(&'a self, id: &'a OperatorId) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| &e.to == id)
    }

    pub fn outputs<'a>(&'a self, id: &'a OperatorId) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| &e.from == id)
    }

    /// The chains, in topological order of their heads.
    pub fn chains(&self) -> Vec<Chain> {
        let order = self.topological_order().expect("validated: acyclic");
        let mut chained_to_upstream = BTreeSet::new();
        for e in &self.edges {
            if self.chains_along(e) {
                chained_to_upstream.insert(e.to.clone());
            }
        }
        let mut chains = Vec::new();
        for head in order.iter().filter(|id| !chained_to_upstream.contains(*id)) {
            let mut operators = vec![head.clone()];
            let mut at = head.clone();
            loop {
                let next = self
                    .outputs(&at)
                    .find(|e| self.chains_along(e))
                    .map(|e| e.to.clone());
                let Some(next) = next else { break };
                operators.push(next.clone());
                at = next;
            }
            let parallelism = self.operator(head).expect("known").parallelism;
            chains.push(Chain {
                operators,
                parallelism,
            });
        }
        chains
    }

    fn chains_along(&self, e: &Edge) -> bool {
        let (from, to) = (
            self.operator(&e.from).expect("validated"),
            self.operator(&e.to).expect("validated"),
        );
        e.partitioning == Partitioning::Forward
            && from.parallelism == to.parallelism
            && self.outputs(&e.from).count() == 1
            && self.inputs(&e.to).count() == 1
    }

    fn check_operators(&self) -> Result<(), CoreError> {
        let mut ids = BTreeSet::new();
        for o in &self.operators {
            if !ids.insert(&o.id) {
                return Err(invalid(format!("operator id {} is used twice", o.id)));
            }
            if o.parallelism == 0 || o.parallelism > self.max_parallelism {
                return Err(invalid(format!(
                    "operator {}: parallelism {} is not within 1..={}",
                    o.id, o.parallelism, self.max_parallelism
                )));
            }
        }
        if !self.operators.iter().any(|o| o.role == Role::Source) {
            return Err(invalid("the graph has no source".into()));
        }
        Ok(())
    }

    fn check_edges(&self) -> Result<(), CoreError> {
        for e in &self.edges {
            let from = self.known(&e.from, e)?;
            let to = self.known(&e.to, e)?;
            let problem = match (from.role, to.role, e.partitioning) {
                (Role::Sink, ..) => Some("a sink has no output"),
                (_, Role::Source, _) => Some("a source has no input"),
                (_, Role::Keyed, p) if p != Partitioning::Hash => {
                    Some("a keyed operator's inputs are partitioned by key (hash)")
                }
                (.., Partitioning::Forward) if from.parallelism != to.parallelism => {
                    Some("a forward edge joins operators of equal parallelism")
                }
                _ => None,
            };
            if let Some(p) = problem {
                return Err(invalid(format!("edge {} -> {}: {p}", e.from, e.to)));
            }
        }
        Ok(())
    }

    fn known(&self, id: &OperatorId, e: &Edge) -> Result<&Operator, CoreError> {
        self.operator(id).ok_or_else(|| {
            invalid(format!(
                "edge {} -> {} names an unknown operator {id}",
                e.from, e.to
            ))
        })
    }

    /// Operators in an order where every edge points forward (Kahn's
    /// algorithm, ties by declaration order); an error names a cycle.
    fn topological_order(&self) -> Result<Vec<OperatorId>, CoreError> {
        let mut indegree: BTreeMap<&OperatorId, usize> =
            self.operators.iter().map(|o| (&o.id, 0)).collect();
        for e in &self.edges {
            *indegree.get_mut(&e.to).expect("validated") += 1;
        }
        let mut ready: Vec<&OperatorId> = self
            .operators
            .iter()
            .map(|o| &o.id)
            .filter(|id| indegree[id] == 0)
            .collect();
        let mut order = Vec::with_capacity(self.operators.len());
        while let Some(id) = (!ready.is_empty()).then(|| ready.remove(0)) {
            order.push(id.clone());
            for e in self.outputs(id) {
                let d = indegree.get_mut(&e.to).expect("validated");
                *d -= 1;
                if *d == 0 {
                    ready.push(&e.to);
                }
            }
        }
        if order.len() != self.operators.len() {
            let cyclic: Vec<String> = indegree
                .iter()
                .filter(|(_, d)| **d > 0)
                .map(|(id, _)| id.to_string())
                .collect();
            return Err(invalid(format!(
                "the graph has a cycle through {}",
                cyclic.join(", ")
            )));
        }
        Ok(order)
    }

    fn check_reachable(&self) -> Result<(), CoreError> {
        let mut seen: BTreeSet<&OperatorId> = self
            .operators
            .iter()
            .filter(|o| o.role == Role::Source)
            .map(|o| &o.id)
            .collect();
        let mut todo: Vec<&OperatorId> = seen.iter().copied().collect();
        while let Some(id) = todo.pop() {
            for e in self.outputs(id) {
                if seen.insert(&e.to) {
                    todo.push(&e.to);
                }
            }
        }
        match self.operators.iter().find(|o| !seen.contains(&o.id)) {
            Some(o) => Err(invalid(format!(
                "operator {} is not reachable from any source",
                o.id
            ))),
            None => Ok(()),
        }
    }
}

fn invalid(why: String) -> CoreError {
    CoreError::InvalidSpec(format!("job graph: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> OperatorId {
        OperatorId::new(s).unwrap()
    }

    fn op(name: &str, role: Role, parallelism: u32) -> Operator {
        Operator {
            id: id(name),
            role,
            parallelism,
        }
    }

    fn edge(from: &str, to: &str, partitioning: Partitioning) -> Edge {
        Edge {
            from: id(from),
            to: id(to),
            partitioning,
        }
    }

    fn names(c: &Chain) -> Vec<&str> {
        c.operators.iter().map(|o| o.as_str()).collect()
    }

    /// source -> map (forward) -> key_by count -> re-key count -> two sinks.
    fn two_stage() -> JobGraph {
        JobGraph::new(
            vec![
                op("src", Role::Source, 2),
                op("parse", Role::Stateless, 2),
                op("count", Role::Keyed, 3),
                op("bucket", Role::Keyed, 2),
                op("out", Role::Sink, 2),
                op("audit", Role::Sink, 1),
            ],
            vec![
                edge("src", "parse", Partitioning::Forward),
                edge("parse", "count", Partitioning::Hash),
                edge("count", "bucket", Partitioning::Hash),
                edge("bucket", "out", Partitioning::Forward),
                edge("count", "audit", Partitioning::Rebalance),
            ],
            128,
        )
        .unwrap()
    }

    #[test]
    fn forward_edges_at_equal_parallelism_chain() {
        let chains = two_stage().chains();
        let got: Vec<_> = chains.iter().map(|c| (names(c), c.parallelism)).collect();
        assert_eq!(
            got,
            vec![
                (vec!["src", "parse"], 2),
                (vec!["count"], 3),
                (vec!["bucket", "out"], 2),
                (vec!["audit"], 1),
            ]
        );
    }

    #[test]
    fn fan_out_and_fan_in_break_chains() {
        let g = JobGraph::new(
            vec![
                op("a", Role::Source, 1),
                op("b", Role::Source, 1),
                op("m", Role::Stateless, 1),
                op("s1", Role::Sink, 1),
                op("s2", Role::Sink, 1),
            ],
            vec![
                edge("a", "m", Partitioning::Forward),
                edge("b", "m", Partitioning::Forward),
                edge("m", "s1", Partitioning::Forward),
                edge("m", "s2", Partitioning::Forward),
            ],
            128,
        )
        .unwrap();
        let chains = g.chains();
        let chains: Vec<Vec<&str>> = chains.iter().map(names).collect();
        assert_eq!(
            chains,
            vec![vec!["a"], vec!["b"], vec!["m"], vec!["s1"], vec!["s2"]]
        );
    }

    #[test]
    fn invalid_graphs_are_refused_with_the_reason() {
        let cases: Vec<(Vec<Operator>, Vec<Edge>, &str)> = vec![
            (
                vec![op("a", Role::Source, 1), op("a", Role::Sink, 1)],
                vec![],
                "used twice",
            ),
            (vec![op("k", Role::Keyed, 1)], vec![], "no source"),
            (
                vec![op("a", Role::Source, 1), op("k", Role::Keyed, 1)],
                vec![edge("a", "k", Partitioning::Forward)],
                "partitioned by key",
            ),
            (
                vec![op("a", Role::Source, 2), op("s", Role::Sink, 1)],
                vec![edge("a", "s", Partitioning::Forward)],
                "equal parallelism",
            ),
            (
                vec![op("a", Role::Source, 1), op("s", Role::Sink, 1)],
                vec![edge("s", "a", Partitioning::Rebalance)],
                "a sink has no output",
            ),
            (
                vec![op("a", Role::Source, 1)],
                vec![edge("a", "zz", Partitioning::Rebalance)],
                "unknown operator zz",
            ),
            (
                vec![
                    op("a", Role::Source, 1),
                    op("m", Role::Stateless, 1),
                    op("n", Role::Stateless, 1),
                ],
                vec![
                    edge("a", "m", Partitioning::Rebalance),
                    edge("m", "n", Partitioning::Rebalance),
                    edge("n", "m", Partitioning::Rebalance),
                ],
                "cycle through m, n",
            ),
            (
                vec![op("a", Role::Source, 1), op("s", Role::Sink, 1)],
                vec![],
                "s is not reachable",
            ),
            (vec![op("a", Role::Source, 0)], vec![], "not within 1..=128"),
        ];
        for (ops, edges, want) in cases {
            let e = JobGraph::new(ops, edges, 128).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
    }

    #[test]
    fn a_graph_round_trips_through_json_and_is_validated_when_read() {
        let g = two_stage();
        let text = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<JobGraph>(&text).unwrap(), g);
        let cyclic = serde_json::json!({
            "operators": [
                {"id": "a", "role": "source", "parallelism": 1},
                {"id": "m", "role": "stateless", "parallelism": 1}
            ],
            "edges": [
                {"from": "a", "to": "m", "partitioning": "rebalance"},
                {"from": "m", "to": "m", "partitioning": "forward"}
            ],
            "max_parallelism": 128
        });
        let e = serde_json::from_value::<JobGraph>(cyclic).unwrap_err();
        assert!(e.to_string().contains("cycle through m"), "{e}");
    }

    #[test]
    fn todays_job_spec_is_source_hash_aggregate_forward_sink() {
        let spec = crate::JobSpec::from_json(
            r#"{"job_id":"pv","parallelism":3,
                "source":{"type":"generator","partitions":2,"events":10,"keys":5},
                "union":[{"type":"generator","partitions":1,"events":10,"keys":5}],
                "key_by":"app_id","aggregate":{"type":"count"}}"#,
        )
        .unwrap();
        let g = spec.graph().unwrap();
        let chains = g.chains();
        let got: Vec<_> = chains.iter().map(|c| (names(c), c.parallelism)).collect();
        assert_eq!(got, vec![(vec!["source"], 3), (vec!["agg", "sink"], 3)]);
        assert_eq!(g.edges()[0].partitioning, Partitioning::Hash);
    }
}
