//! Quiet hours: a daily window in the user's time zone in which only urgent deliveries go out;
//! the others wait until the window ends, when the releaser task queues them.

use chrono::{DateTime, Duration, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use opsconductor_api::user::v1::{NotificationPreferences, QuietHours};
use opsconductor_platform::server::Tasks;
use opsconductor_platform::time::now_micros;

use crate::deliveries::DeliveryStore;

fn hhmm(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

/// When a non-urgent delivery created at `now` may go: `None` now, else the window's end.
/// An unusable setting (bad zone or time, start = end) holds nothing back: the user service
/// validates preferences, and a notification lost to a bad setting is worse than an early one.
pub fn defer_until(quiet: Option<&QuietHours>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let q = quiet.filter(|q| q.enabled)?;
    let zone: Tz = q.time_zone.parse().ok()?;
    let (start, end) = (hhmm(&q.start)?, hhmm(&q.end)?);
    if start == end {
        return None;
    }
    let local = now.with_timezone(&zone);
    let time = local.time();
    let inside = if start < end {
        time >= start && time < end
    } else {
        time >= start || time < end
    };
    if !inside {
        return None;
    }
    // The window ends today when its end is still ahead, else tomorrow.
    let mut day = local.date_naive();
    if time >= end {
        day = day.succ_opt()?;
    }
    Some(first_instant_at_or_after(&zone, day.and_time(end)))
}

/// Until when `prefs`' quiet hours hold a delivery created now (Unix microseconds); urgent
/// ones are never held.
pub fn held_until(prefs: &NotificationPreferences, urgent: bool) -> Option<i64> {
    if urgent {
        return None;
    }
    defer_until(prefs.quiet_hours.as_ref(), Utc::now()).map(|t| t.timestamp_micros())
}

/// A local time as an instant; in a DST gap, the first instant after the gap; in an overlap,
/// the earlier one.
fn first_instant_at_or_after(zone: &Tz, local: chrono::NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    for _ in 0..(4 * 60) {
        match zone.from_local_datetime(&probe) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(early, _) => return early.with_timezone(&Utc),
            LocalResult::None => probe += Duration::minutes(1),
        }
    }
    // No zone has a gap of four hours; fall back to reading the time as UTC.
    Utc.from_utc_datetime(&local)
}

/// Queues deliveries whose quiet hours ended: sleeps until the earliest is due (at most one
/// poll interval, so deliveries deferred meanwhile by other replicas are seen).
pub fn spawn_releaser(deliveries: DeliveryStore, poll: std::time::Duration) -> Tasks {
    Tasks(vec![tokio::spawn(async move {
        loop {
            if let Err(e) = deliveries.release_due(500).await {
                tracing::warn!(error = %e, "releasing deferred deliveries failed; retrying");
            }
            let sleep = match deliveries.next_release().await {
                Ok(Some(at)) => {
                    std::time::Duration::from_micros((at - now_micros()).max(0) as u64).min(poll)
                }
                _ => poll,
            };
            tokio::time::sleep(sleep).await;
        }
    })])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(start: &str, end: &str, zone: &str) -> QuietHours {
        QuietHours {
            enabled: true,
            start: start.into(),
            end: end.into(),
            time_zone: zone.into(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_window_across_midnight_holds_until_its_end_in_the_users_zone() {
        let q = quiet("22:00", "07:00", "Europe/Berlin");
        // 23:30 in Berlin (CET, UTC+1) → 07:00 Berlin the next day = 06:00Z.
        assert_eq!(
            defer_until(Some(&q), utc("2026-01-15T22:30:00Z")),
            Some(utc("2026-01-16T06:00:00Z"))
        );
        // 03:00 Berlin → 07:00 the same day.
        assert_eq!(
            defer_until(Some(&q), utc("2026-01-16T02:00:00Z")),
            Some(utc("2026-01-16T06:00:00Z"))
        );
        // 12:00 Berlin: outside.
        assert_eq!(defer_until(Some(&q), utc("2026-01-16T11:00:00Z")), None);
        // Exactly at the end: outside.
        assert_eq!(defer_until(Some(&q), utc("2026-01-16T06:00:00Z")), None);
    }

    #[test]
    fn a_day_window_and_disabled_or_unusable_settings() {
        let q = quiet("09:00", "17:00", "America/New_York");
        assert_eq!(
            defer_until(Some(&q), utc("2026-07-01T14:00:00Z")),
            Some(utc("2026-07-01T21:00:00Z"))
        );
        let mut off = q.clone();
        off.enabled = false;
        assert_eq!(defer_until(Some(&off), utc("2026-07-01T14:00:00Z")), None);
        assert_eq!(defer_until(None, utc("2026-07-01T14:00:00Z")), None);
        let bad = quiet("09:00", "17:00", "Mars/Olympus");
        assert_eq!(defer_until(Some(&bad), utc("2026-07-01T14:00:00Z")), None);
        let empty = quiet("09:00", "09:00", "UTC");
        assert_eq!(defer_until(Some(&empty), utc("2026-07-01T09:30:00Z")), None);
    }

    #[test]
    fn an_end_inside_a_dst_gap_moves_to_the_first_instant_after_it() {
        // Berlin skips 02:00-03:00 on 2026-03-29; a window ending 02:30 ends at 03:00 CEST.
        let q = quiet("01:00", "02:30", "Europe/Berlin");
        assert_eq!(
            defer_until(Some(&q), utc("2026-03-29T00:30:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
    }
}
