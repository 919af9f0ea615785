//! Event-time windows (Dataflow II): what a job's `window` says
//! ([`WindowSpec`]: tumbling or sliding, with allowed lateness) and which
//! windows a record falls in ([`WindowSpec::assign`], Flink's
//! `TumblingEventTimeWindows` / `SlidingEventTimeWindows` with offset 0).
//! Pure; the operator that keeps window state and fires on timers is
//! `cutpoint_operator::window`.
//!
//! A window `[start, end)` holds the records with `start <= ts < end`; it
//! fires once the watermark reaches its last millisecond `end - 1`, and
//! its state goes once the watermark reaches `end - 1 + allowed_lateness`
//! (its cleanup time). A record for a window past its cleanup time is
//! late: dropped and counted.

use serde::{Deserialize, Serialize};

/// A job's event-time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    /// Back-to-back windows of `size_ms`.
    Tumbling {
        size_ms: u64,
        #[serde(default)]
        allowed_lateness_ms: u64,
    },
    /// Windows of `size_ms` starting every `slide_ms` (each record is in
    /// `size_ms / slide_ms` of them, rounded up).
    Sliding {
        size_ms: u64,
        slide_ms: u64,
        #[serde(default)]
        allowed_lateness_ms: u64,
    },
}

/// One window, `[start, end)` in event time (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// Its last millisecond: when it fires.
    pub fn max_timestamp(&self) -> i64 {
        self.end - 1
    }

    /// Its encoding as a state namespace (16 bytes, ordered by start).
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&((self.start as u64) ^ (1 << 63)).to_be_bytes());
        out[8..].copy_from_slice(&((self.end as u64) ^ (1 << 63)).to_be_bytes());
        out
    }

    /// A window [`Window::encode`] wrote; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<Window> {
        let start: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let end: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
        (bytes.len() == 16).then(|| Window {
            start: (u64::from_be_bytes(start) ^ (1 << 63)) as i64,
            end: (u64::from_be_bytes(end) ^ (1 << 63)) as i64,
        })
    }
}

impl WindowSpec {
    /// The longest window: 31 days.
    pub const MAX_SIZE_MS: u64 = 31 * 24 * 3_600_000;
    /// The most windows one record may fall in.
    pub const MAX_WINDOWS_PER_RECORD: u64 = 100;
    /// The longest allowed lateness: a week.
    pub const MAX_LATENESS_MS: u64 = 7 * 24 * 3_600_000;

    fn size_slide(&self) -> (i64, i64) {
        match *self {
            WindowSpec::Tumbling { size_ms, .. } => (size_ms as i64, size_ms as i64),
            WindowSpec::Sliding {
                size_ms, slide_ms, ..
            } => (size_ms as i64, slide_ms as i64),
        }
    }

    /// How long after a window's end records for it still count.
    pub fn allowed_lateness(&self) -> i64 {
        match *self {
            WindowSpec::Tumbling {
                allowed_lateness_ms,
                ..
            }
            | WindowSpec::Sliding {
                allowed_lateness_ms,
                ..
            } => allowed_lateness_ms as i64,
        }
    }

    /// When `w`'s state goes (its last millisecond plus the lateness).
    pub fn cleanup_time(&self, w: &Window) -> i64 {
        w.max_timestamp().saturating_add(self.allowed_lateness())
    }

    /// The windows a record at `ts` falls in, latest start first (replaces
    /// `out`'s contents). Windows reaching past the end of time are left
    /// out.
    pub fn assign(&self, ts: i64, out: &mut Vec<Window>) {
        out.clear();
        let (size, slide) = self.size_slide();
        let Some(mut start) = ts.checked_sub(ts.rem_euclid(slide)) else {
            return;
        };
        while start > ts.saturating_sub(size) {
            if let Some(end) = start.checked_add(size) {
                out.push(Window { start, end });
            }
            match start.checked_sub(slide) {
                Some(s) => start = s,
                None => break,
            }
        }
    }

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        let (size, slide) = self.size_slide();
        if size < 1 || size as u64 > Self::MAX_SIZE_MS {
            return Some(format!(
                "window.size_ms must be in 1..={} (31 days)",
                Self::MAX_SIZE_MS
            ));
        }
        if slide < 1 || slide > size {
            return Some("window.slide_ms must be in 1..=size_ms".into());
        }
        if (size as u64).div_ceil(slide as u64) > Self::MAX_WINDOWS_PER_RECORD {
            return Some(format!(
                "window: size_ms / slide_ms puts each record in more than {} windows",
                Self::MAX_WINDOWS_PER_RECORD
            ));
        }
        if self.allowed_lateness() as u64 > Self::MAX_LATENESS_MS {
            return Some(format!(
                "window.allowed_lateness_ms must be at most {} (a week)",
                Self::MAX_LATENESS_MS
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(spec: WindowSpec, ts: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        spec.assign(ts, &mut out);
        out.into_iter().map(|w| (w.start, w.end)).collect()
    }

    #[test]
    fn a_tumbling_window_holds_its_start_and_not_its_end() {
        let t = WindowSpec::Tumbling {
            size_ms: 10,
            allowed_lateness_ms: 0,
        };
        assert_eq!(windows(t, 0), [(0, 10)]);
        assert_eq!(windows(t, 9), [(0, 10)]);
        assert_eq!(windows(t, 10), [(10, 20)]);
        assert_eq!(windows(t, -1), [(-10, 0)], "before the epoch too");
        assert_eq!(Window { start: 0, end: 10 }.max_timestamp(), 9);
    }

    #[test]
    fn a_sliding_window_puts_a_record_in_size_over_slide_windows() {
        let s = WindowSpec::Sliding {
            size_ms: 10,
            slide_ms: 5,
            allowed_lateness_ms: 3,
        };
        assert_eq!(windows(s, 7), [(5, 15), (0, 10)]);
        assert_eq!(windows(s, 5), [(5, 15), (0, 10)]);
        assert_eq!(windows(s, 4), [(0, 10), (-5, 5)]);
        let uneven = WindowSpec::Sliding {
            size_ms: 10,
            slide_ms: 3,
            allowed_lateness_ms: 0,
        };
        // Starts at multiples of 3 in (ts - 10, ts].
        assert_eq!(windows(uneven, 10), [(9, 19), (6, 16), (3, 13)]);
        assert_eq!(s.cleanup_time(&Window { start: 0, end: 10 }), 12);
    }

    #[test]
    fn windows_at_the_ends_of_time_do_not_overflow() {
        let t = WindowSpec::Tumbling {
            size_ms: 1000,
            allowed_lateness_ms: 0,
        };
        assert!(windows(t, i64::MAX).is_empty(), "its end is past i64::MAX");
        assert!(
            windows(t, i64::MIN).is_empty(),
            "its start is before i64::MIN"
        );
        // i64::MIN is 192 past a multiple of 1000.
        assert_eq!(
            windows(t, i64::MIN + 1000),
            [(i64::MIN + 808, i64::MIN + 1808)]
        );
    }

    #[test]
    fn a_window_round_trips_as_a_namespace_in_order() {
        let a = Window { start: -5, end: 5 };
        let b = Window { start: 3, end: 13 };
        assert_eq!(Window::decode(&a.encode()), Some(a));
        assert!(a.encode() < b.encode());
        assert_eq!(Window::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn sizes_slides_and_lateness_are_bounded() {
        let bad = [
            r#"{"type":"tumbling","size_ms":0}"#,
            r#"{"type":"sliding","size_ms":10,"slide_ms":20}"#,
            r#"{"type":"sliding","size_ms":1000,"slide_ms":1}"#,
            r#"{"type":"tumbling","size_ms":10,"allowed_lateness_ms":604800001}"#,
        ];
        for b in bad {
            let w: WindowSpec = serde_json::from_str(b).unwrap();
            assert!(w.problem().is_some(), "{b}");
        }
        let ok: WindowSpec =
            serde_json::from_str(r#"{"type":"sliding","size_ms":60000,"slide_ms":1000}"#).unwrap();
        assert_eq!(ok.problem(), None);
        assert!(serde_json::from_str::<WindowSpec>(r#"{"type":"session","gap_ms":5}"#).is_err());
    }
}
