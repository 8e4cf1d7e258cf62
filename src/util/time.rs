//! Unix seconds to UTC calendar time: the one civil-from-days routine, and
//! the RFC 5322 date that `Received:` headers and DSNs carry. Accounting
//! formats its own timestamp layouts from [`civil_from_unix`].
//!
//! No clock reads here: callers pass the time in.

/// A UTC calendar time, second resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Thursday (1970-01-01 was one) .. 6 = Wednesday.
    weekday_from_thursday: u32,
}

/// Splits unix seconds into UTC calendar fields (proleptic Gregorian;
/// negative times are before 1970).
pub fn civil_from_unix(unix_secs: i64) -> CivilTime {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // rem_euclid keeps these in range, so the casts cannot truncate.
    CivilTime {
        year,
        month,
        day,
        hour: (secs / 3600) as u32,
        minute: (secs % 3600 / 60) as u32,
        second: (secs % 60) as u32,
        weekday_from_thursday: days.rem_euclid(7) as u32,
    }
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (Howard Hinnant's civil-from-days algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // doy is 0..=365 and mp 0..=11, so day and month fit in u32.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `Fri, 27 Nov 2026 22:04:58 +0000` for unix seconds (RFC 5322 §3.3,
/// always UTC).
pub fn rfc5322_date(unix_secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = civil_from_unix(unix_secs);
    let weekday = DAYS
        .get(t.weekday_from_thursday as usize)
        .copied()
        .unwrap_or("Thu");
    let month_name = MONTHS
        .get((t.month as usize).wrapping_sub(1))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{weekday}, {:02} {month_name} {} {:02}:{:02}:{:02} +0000",
        t.day, t.year, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_817_098),
            "Fri, 27 Nov 2026 22:04:58 +0000"
        );
        assert_eq!(
            rfc5322_date(1_795_816_276),
            "Fri, 27 Nov 2026 21:51:16 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(-1), "Wed, 31 Dec 1969 23:59:59 +0000");
    }

    #[test]
    fn civil_fields() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let t = civil_from_unix(1_795_817_098);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2026, 11, 27, 22, 4, 58)
        );
    }
}
