//! Event-time windows (Dataflow II): what a job's `window` says
//! ([`WindowSpec`]: tumbling, sliding or session, with allowed lateness),
//! which windows a record falls in ([`WindowSpec::assign`], Flink's
//! `TumblingEventTimeWindows` / `SlidingEventTimeWindows` with offset 0,
//! `EventTimeSessionWindows`) and how session windows merge
//! ([`merge_session`]). Pure; the operators that keep window state and
//! fire on timers are `cutpoint_operator::window` and
//! `cutpoint_operator::session`.
//!
//! A window `[start, end)` holds the records with `start <= ts < end`; it
//! fires once the watermark reaches its last millisecond `end - 1`, and
//! its state goes once the watermark reaches `end - 1 + allowed_lateness`
//! (its cleanup time). A record for a window past its cleanup time is
//! late: dropped and counted.
//!
//! Session windows: a record at `ts` opens the window `[ts, ts + gap)`;
//! windows of one key that overlap merge into one (their cover). Windows
//! that only touch (`[0, 10)` and `[10, 20)`) do not merge, unlike
//! Flink's: a record exactly `gap` after the last one starts a new
//! session. With Flink's rule the record at `end` merges or not depending
//! on whether the watermark reached `end - 1` before it arrived; with
//! this one a session's extent depends only on its records (a record
//! ahead of the watermark cannot overlap a fired session). A record
//! behind the watermark whose own window is not past its cleanup time
//! still counts, as in Flink: it may open a session overlapping one that
//! fired and was cleaned up.

use serde::{Deserialize, Serialize};

/// Which clock a window follows: the records' event time (the default),
/// or the wall clock when the keyed task processes each record (Flink's
/// `TumblingProcessingTimeWindows` and kin: no watermarks, nothing is
/// late, and which window a record falls in depends on when it is
/// processed; every window still fires once, its state and timers kept in
/// the checkpoints; open windows fire at the end of the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowTime {
    #[default]
    Event,
    Processing,
}

impl WindowTime {
    pub fn is_event(&self) -> bool {
        *self == WindowTime::Event
    }
}

/// A job's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    /// Back-to-back windows of `size_ms`.
    Tumbling {
        size_ms: u64,
        #[serde(default)]
        allowed_lateness_ms: u64,
        #[serde(default, skip_serializing_if = "WindowTime::is_event")]
        time: WindowTime,
    },
    /// Windows of `size_ms` starting every `slide_ms` (each record is in
    /// `size_ms / slide_ms` of them, rounded up).
    Sliding {
        size_ms: u64,
        slide_ms: u64,
        #[serde(default)]
        allowed_lateness_ms: u64,
        #[serde(default, skip_serializing_if = "WindowTime::is_event")]
        time: WindowTime,
    },
    /// Per key, records less than `gap_ms` apart form one session: its
    /// window runs from its first record to its last plus `gap_ms`.
    Session {
        gap_ms: u64,
        #[serde(default)]
        allowed_lateness_ms: u64,
        #[serde(default, skip_serializing_if = "WindowTime::is_event")]
        time: WindowTime,
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

    /// Size and slide (a session's gap, and a slide that lets the first
    /// check pass).
    fn size_slide(&self) -> (i64, i64) {
        match *self {
            WindowSpec::Tumbling { size_ms, .. } => (size_ms as i64, size_ms as i64),
            WindowSpec::Sliding {
                size_ms, slide_ms, ..
            } => (size_ms as i64, slide_ms as i64),
            WindowSpec::Session { gap_ms, .. } => (gap_ms as i64, gap_ms as i64),
        }
    }

    /// Which clock it follows.
    pub fn time(&self) -> WindowTime {
        match *self {
            WindowSpec::Tumbling { time, .. }
            | WindowSpec::Sliding { time, .. }
            | WindowSpec::Session { time, .. } => time,
        }
    }

    /// Whether its windows merge (session windows).
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }

    /// Its shape in words (`tumbling 1000 ms`; `tumbling 1000 ms of
    /// processing time`), for state names.
    pub fn shape(&self) -> String {
        let shape = match *self {
            WindowSpec::Tumbling { size_ms, .. } => format!("tumbling {size_ms} ms"),
            WindowSpec::Sliding {
                size_ms, slide_ms, ..
            } => format!("sliding {size_ms} ms every {slide_ms} ms"),
            WindowSpec::Session { gap_ms, .. } => format!("session gap {gap_ms} ms"),
        };
        match self.time() {
            WindowTime::Event => shape,
            WindowTime::Processing => format!("{shape} of processing time"),
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
            }
            | WindowSpec::Session {
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
    /// `out`'s contents; a session's: its own, before merging). Windows
    /// reaching past the end of time are left out.
    pub fn assign(&self, ts: i64, out: &mut Vec<Window>) {
        out.clear();
        if let WindowSpec::Session { gap_ms, .. } = *self {
            if let Some(end) = ts.checked_add(gap_ms as i64) {
                out.push(Window { start: ts, end });
            }
            return;
        }
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
        if self.is_merging() && (size < 1 || size as u64 > Self::MAX_SIZE_MS) {
            return Some(format!(
                "window.gap_ms must be in 1..={} (31 days)",
                Self::MAX_SIZE_MS
            ));
        }
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
        if self.time() == WindowTime::Processing && self.allowed_lateness() > 0 {
            return Some(
                "window.allowed_lateness_ms applies to event time only (nothing is late in processing time)"
                    .into(),
            );
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

/// Merges `new` into a key's sessions (sorted by start, pairwise
/// disjoint): the merged window (the cover of `new` and every session it
/// overlaps) and the range of `sessions` it replaces (empty if it
/// overlaps none: then it goes in at that position). Overlapping sessions
/// are consecutive, since they are sorted and disjoint.
pub fn merge_session(sessions: &[Window], new: Window) -> (Window, std::ops::Range<usize>) {
    // The first session that ends after `new` starts, and the first that
    // starts at or after `new`'s end: the ones between overlap it.
    let first = sessions.partition_point(|s| s.end <= new.start);
    let last = first + sessions[first..].partition_point(|s| s.start < new.end);
    let merged = sessions[first..last].iter().fold(new, |m, s| Window {
        start: m.start.min(s.start),
        end: m.end.max(s.end),
    });
    (merged, first..last)
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
            time: WindowTime::Event,
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
            time: WindowTime::Event,
        };
        assert_eq!(windows(s, 7), [(5, 15), (0, 10)]);
        assert_eq!(windows(s, 5), [(5, 15), (0, 10)]);
        assert_eq!(windows(s, 4), [(0, 10), (-5, 5)]);
        let uneven = WindowSpec::Sliding {
            size_ms: 10,
            slide_ms: 3,
            allowed_lateness_ms: 0,
            time: WindowTime::Event,
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
            time: WindowTime::Event,
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
        let session: WindowSpec = serde_json::from_str(r#"{"type":"session","gap_ms":5}"#).unwrap();
        assert_eq!(session.problem(), None);
        let no_gap: WindowSpec = serde_json::from_str(r#"{"type":"session","gap_ms":0}"#).unwrap();
        assert!(no_gap.problem().unwrap().contains("gap_ms"));
        assert!(serde_json::from_str::<WindowSpec>(r#"{"type":"session","size_ms":5}"#).is_err());
    }

    fn w(start: i64, end: i64) -> Window {
        Window { start, end }
    }

    #[test]
    fn a_session_record_opens_its_own_window_of_the_gap() {
        let s = WindowSpec::Session {
            gap_ms: 10,
            allowed_lateness_ms: 0,
            time: WindowTime::Event,
        };
        assert_eq!(windows(s, 7), [(7, 17)]);
        assert!(windows(s, i64::MAX - 3).is_empty());
        assert_eq!(s.cleanup_time(&w(7, 17)), 16);
        assert!(s.is_merging());
    }

    #[test]
    fn session_windows_merge_when_they_overlap_and_not_when_they_touch() {
        let sessions = [w(0, 10), w(20, 30), w(40, 50)];
        // Inside one: that one, unchanged.
        assert_eq!(merge_session(&sessions, w(22, 28)), (w(20, 30), 1..2));
        // Overlapping one on either side.
        assert_eq!(merge_session(&sessions, w(25, 35)), (w(20, 35), 1..2));
        assert_eq!(merge_session(&sessions, w(15, 25)), (w(15, 30), 1..2));
        // Bridging two: all three become one.
        assert_eq!(merge_session(&sessions, w(5, 45)), (w(0, 50), 0..3));
        assert_eq!(merge_session(&sessions, w(9, 21)), (w(0, 30), 0..2));
        // Touching only: no merge, it goes in between.
        assert_eq!(merge_session(&sessions, w(10, 20)), (w(10, 20), 1..1));
        assert_eq!(merge_session(&sessions, w(30, 40)), (w(30, 40), 2..2));
        // Before all, after all, and into none.
        assert_eq!(merge_session(&sessions, w(-10, 0)), (w(-10, 0), 0..0));
        assert_eq!(merge_session(&sessions, w(60, 70)), (w(60, 70), 3..3));
        assert_eq!(merge_session(&[], w(1, 2)), (w(1, 2), 0..0));
    }

    #[test]
    fn sessions_built_record_by_record_match_the_gaps_between_sorted_times() {
        // Any arrival order gives the sessions of the sorted times: a new
        // session wherever two consecutive times are `gap` or more apart.
        let gap = 5;
        let times = [31, 3, 17, 9, 12, 40, 1, 36, 26, 44];
        let mut sessions: Vec<Window> = Vec::new();
        for t in times {
            let (merged, range) = merge_session(&sessions, w(t, t + gap));
            sessions.splice(range, [merged]);
        }
        let mut sorted = times.to_vec();
        sorted.sort();
        let mut expected = vec![w(sorted[0], sorted[0] + gap)];
        for t in &sorted[1..] {
            let last = expected.last_mut().unwrap();
            if t - (last.end - gap) < gap {
                last.end = t + gap;
            } else {
                expected.push(w(*t, t + gap));
            }
        }
        assert_eq!(sessions, expected);
        assert_eq!(sessions.len(), 6, "{sessions:?}");
    }
}
