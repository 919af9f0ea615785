//! The chaos harness's own keyed process function, written on the public
//! operator API as a user's is, so that cycles run the path of a Rust
//! program's function (registered by name, run by a `process` aggregate)
//! with value, list and map state. The harness's runs register it (the
//! hidden `chaos-run` command); the `cutpoint` binary's `run` and `serve`
//! do not.
//!
//! [`FirstSeen`]: per app, the users in the order they were first seen
//! (a `ListState`, appended), each one's position in it (a `MapState`) and
//! their number (a `ValueState`, the result). A new user is appended and
//! its number emitted — updates 1, 2, …, distinct users, like the other
//! forms. Every [`CHECK_EVERY`]th user it reads the list back and fails the
//! task if list, map and count disagree, so a restore that lost or
//! repeated list entries fails the run instead of only skewing a count.

use cutpoint_operator::{
    Key, KeyedContext, KeyedProcessFunction, OperatorError, Record, StateDescriptor, Value,
    WithResult,
};

/// Its registered name.
pub const NAME: &str = "chaos_first_seen";
/// Users between two read-backs of the list.
const CHECK_EVERY: i64 = 32;

pub struct FirstSeen {
    order: StateDescriptor,
    position: StateDescriptor,
    users: StateDescriptor,
}

impl Default for FirstSeen {
    fn default() -> Self {
        Self {
            order: StateDescriptor::list("order"),
            position: StateDescriptor::map("position"),
            users: StateDescriptor::value("users"),
        }
    }
}

impl KeyedProcessFunction for FirstSeen {
    type In = Record;
    type Out = (Key, Value);

    fn states(&self) -> Vec<StateDescriptor> {
        vec![
            self.order.clone(),
            self.position.clone(),
            self.users.clone(),
        ]
    }

    fn process(
        &mut self,
        r: Record,
        ctx: &mut KeyedContext<'_>,
        out: &mut Vec<(Key, Value)>,
    ) -> Result<(), OperatorError> {
        let user = cutpoint_operator::integer(&r)?;
        if ctx.map_get::<i64, i64>(&self.position, &user)?.is_some() {
            return Ok(());
        }
        let n = ctx.value::<i64>(&self.users)?.unwrap_or(0) + 1;
        ctx.list_add(&self.order, &user)?;
        ctx.map_put(&self.position, &user, &n)?;
        ctx.set_value(&self.users, &n)?;
        if n % CHECK_EVERY == 0 {
            self.check(ctx, n)?;
        }
        out.push((r.key, Value::Int(n)));
        Ok(())
    }
}

impl FirstSeen {
    /// The list holds `n` distinct users, each at the position the map has.
    fn check(&self, ctx: &mut KeyedContext<'_>, n: i64) -> Result<(), OperatorError> {
        let order = ctx.list::<i64>(&self.order)?;
        let key = ctx.current_key().clone();
        let disagree = |why: String| {
            Err(OperatorError::User(format!(
                "{NAME}: key {key}: list, map and count disagree: {why}"
            )))
        };
        if order.len() as i64 != n {
            return disagree(format!("{} users listed, count {n}", order.len()));
        }
        for (i, user) in order.iter().enumerate() {
            let at = ctx.map_get::<i64, i64>(&self.position, user)?;
            if at != Some(i as i64 + 1) {
                return disagree(format!("user {user} listed at {}, mapped to {at:?}", i + 1));
            }
        }
        Ok(())
    }
}

impl WithResult for FirstSeen {
    type Result = i64;

    fn result_state(&self) -> &StateDescriptor {
        &self.users
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutpoint_operator::{Functions, Input};

    fn make() -> Box<dyn cutpoint_operator::RecordOperator> {
        let functions = Functions::new().register(NAME, FirstSeen::default);
        let name = cutpoint_core::FunctionName::new(NAME).unwrap();
        functions.make(&name, 128).unwrap()
    }

    fn user(value: i64) -> Record {
        Record::int(Key::Int(7), value)
    }

    #[test]
    fn emits_each_new_users_number_and_checks_its_list() {
        let mut op = make();
        let mut out = Vec::new();
        for u in (0..100).chain(0..100) {
            op.process(Input::First, user(u), &mut out).unwrap();
        }
        let emitted: Vec<Value> = out.into_iter().map(|(_, n)| n).collect();
        assert_eq!(emitted, (1..=100).map(Value::Int).collect::<Vec<_>>());
        assert_eq!(op.results().unwrap(), vec![(Key::Int(7), Value::Int(100))]);
    }

    /// State restored with one list element missing: the next read-back
    /// fails the task, naming the disagreement.
    #[test]
    fn a_list_that_lost_an_element_fails_the_check() {
        let mut op = make();
        let mut out = Vec::new();
        for u in 0..40 {
            op.process(Input::First, user(u), &mut out).unwrap();
        }
        let mut back = make();
        let mut dropped = false;
        for (k, v) in &op.snapshot() {
            let e = cutpoint_state::layout::decode_entry(k).unwrap();
            // State 0 is the list ("order", declared first).
            if e.state == 0 && !std::mem::replace(&mut dropped, true) {
                continue;
            }
            back.restore_entry(k, v.as_ref().unwrap()).unwrap();
        }
        let err = (40..64)
            .try_for_each(|u| back.process(Input::First, user(u), &mut out))
            .unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}
