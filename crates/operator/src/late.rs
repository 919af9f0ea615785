//! Records an operator drops as late ([`LateRecords`]): counted, and kept
//! until the task takes them for the job's side output (`late_sink`) or
//! drops them — it takes them after every batch, so they never pile up.

use cutpoint_core::Record;

/// An operator's late records: how many so far, and those not yet taken.
#[derive(Debug, Default)]
pub struct LateRecords {
    count: u64,
    waiting: Vec<Record>,
}

impl LateRecords {
    /// `record` is late: counted, and kept for [`LateRecords::take`].
    pub fn push(&mut self, record: Record) {
        self.count += 1;
        self.waiting.push(record);
    }

    /// How many were late so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Moves those not yet taken to `out`, in the order they came.
    pub fn take(&mut self, out: &mut Vec<Record>) {
        out.append(&mut self.waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutpoint_core::Key;

    #[test]
    fn late_records_are_counted_and_taken_once_in_order() {
        let mut late = LateRecords::default();
        late.push(Record::int(Key::Int(1), 10));
        late.push(Record::int(Key::Int(2), 20));
        let mut out = Vec::new();
        late.take(&mut out);
        late.take(&mut out);
        assert_eq!(
            out,
            [Record::int(Key::Int(1), 10), Record::int(Key::Int(2), 20)]
        );
        assert_eq!(late.count(), 2);
    }
}
