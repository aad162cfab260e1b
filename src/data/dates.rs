//! Dates written as people write them ("Thursday, November 26, 2026", "26 nov 2026",
//! "11/26/26", "26.11.2026", "nov 26th 2026", ...) paired with their ISO 8601 form
//! ("2026-11-26"): a translation task for a character-level seq2seq model.
//!
//! Dates run from 1950-01-01 to 2049-12-31, so a two-digit year is never ambiguous (00–49 are
//! 20xx, 50–99 are 19xx). The formats never contradict each other: slashes put the month first
//! (US), dots the day first, and a four-digit group first is always the year.
//!
//! Every date belongs to one split by a hash of the date itself (about 90% train, 5% val,
//! 5% test), so held-out dates never appear in training, in any format. Example `i` of a
//! split under a seed is a pure function of (seed, split, i): a date drawn uniformly from the
//! split's dates and a format drawn uniformly.
//!
//! Tokens are characters. The source vocabulary ([`source_vocab`]) holds the digits, the
//! letters in both cases, `,` `.` `/` `-`, and [`SPACE`] for a space (a vocabulary word holds
//! no whitespace); the target vocabulary ([`target_vocab`]) the digits and `-`. Both start with
//! `models::Vocab`'s special tokens.

use super::split::{example_seed, mix, Split};
use crate::error::{Error, Result};
use crate::models::Vocab;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

/// The first and last years generated.
pub const FIRST_YEAR: i32 = 1950;
pub const LAST_YEAR: i32 = 2049;

/// How many formats [`write`] knows.
pub const FORMATS: usize = 24;

/// The source token that stands for a space.
pub const SPACE: &str = "▁";

/// Mixed into a date's hash: which split a date falls in.
const SPLIT_SALT: u64 = 0xda7e_5eed;

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Monday first.
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A day of the Gregorian calendar between [`FIRST_YEAR`] and [`LAST_YEAR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: i32,
    month: u32,
    day: u32,
}

impl Date {
    /// The date, when it exists and lies in the generated years.
    pub fn new(year: i32, month: u32, day: u32) -> Result<Date> {
        let date = Date { year, month, day };
        let valid = (FIRST_YEAR..=LAST_YEAR).contains(&year)
            && (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day);
        if !valid {
            return Err(Error::Config(format!(
                "{} is not a date from {FIRST_YEAR} to {LAST_YEAR}",
                date.iso()
            )));
        }
        Ok(date)
    }

    pub fn year(&self) -> i32 {
        self.year
    }

    /// 1..=12.
    pub fn month(&self) -> u32 {
        self.month
    }

    /// 1..=31.
    pub fn day(&self) -> u32 {
        self.day
    }

    /// "2026-11-26".
    pub fn iso(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// 0 for Monday to 6 for Sunday.
    pub fn weekday(&self) -> usize {
        // 1970-01-01 was a Thursday.
        (self.days() + 3).rem_euclid(7) as usize
    }

    /// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
    fn days(&self) -> i64 {
        let (m, d) = (i64::from(self.month), i64::from(self.day));
        let y = i64::from(self.year) - i64::from(m <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date `days` after 1970-01-01 (`civil_from_days`).
    fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// "1st", "2nd", "3rd", "4th", ..., "11th", ..., "21st".
fn ordinal(day: u32) -> String {
    let suffix = match (day % 10, day % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{day}{suffix}")
}

/// `date` written in format `format` (0..[`FORMATS`]); for Thursday 2026-11-26 and Monday
/// 2026-01-05:
///
/// | | | |
/// |---|---|---|
/// | 0 `Thursday, November 26, 2026` | 8 `Thursday 26 November 2026` | 16 `26.11.26` |
/// | 1 `Thu, Nov 26, 2026` | 9 `26-Nov-2026` | 17 `5.1.2026` |
/// | 2 `November 26, 2026` | 10 `NOV 26 2026` | 18 `2026-11-26` |
/// | 3 `Nov 26, 2026` | 11 `26 NOVEMBER 2026` | 19 `2026/11/26` |
/// | 4 `nov 26th 2026` | 12 `11/26/26` | 20 `20261126` |
/// | 5 `26 nov 2026` | 13 `11/26/2026` | 21 `2026.11.26` |
/// | 6 `26 November 2026` | 14 `1/5/2026` | 22 `Nov. 26, 2026` |
/// | 7 `26th of November 2026` | 15 `26.11.2026` | 23 `the 26th of november, 2026` |
pub fn write(date: Date, format: usize) -> Result<String> {
    let Date { year, month, day } = date;
    let full = MONTHS[month as usize - 1];
    let short = &full[..3];
    let weekday = WEEKDAYS[date.weekday()];
    let yy = year.rem_euclid(100);
    Ok(match format {
        0 => format!("{weekday}, {full} {day}, {year}"),
        1 => format!("{}, {short} {day}, {year}", &weekday[..3]),
        2 => format!("{full} {day}, {year}"),
        3 => format!("{short} {day}, {year}"),
        4 => format!("{} {} {year}", short.to_lowercase(), ordinal(day)),
        5 => format!("{day} {} {year}", short.to_lowercase()),
        6 => format!("{day} {full} {year}"),
        7 => format!("{} of {full} {year}", ordinal(day)),
        8 => format!("{weekday} {day} {full} {year}"),
        9 => format!("{day:02}-{short}-{year}"),
        10 => format!("{} {day} {year}", short.to_uppercase()),
        11 => format!("{day} {} {year}", full.to_uppercase()),
        12 => format!("{month:02}/{day:02}/{yy:02}"),
        13 => format!("{month:02}/{day:02}/{year}"),
        14 => format!("{month}/{day}/{year}"),
        15 => format!("{day:02}.{month:02}.{year}"),
        16 => format!("{day:02}.{month:02}.{yy:02}"),
        17 => format!("{day}.{month}.{year}"),
        18 => date.iso(),
        19 => format!("{year}/{month:02}/{day:02}"),
        20 => format!("{year}{month:02}{day:02}"),
        21 => format!("{year}.{month:02}.{day:02}"),
        22 => format!("{short}. {day}, {year}"),
        23 => format!("the {} of {}, {year}", ordinal(day), full.to_lowercase()),
        _ => {
            return Err(Error::Config(format!(
                "date format {format} (there are {FORMATS}: 0..{FORMATS})"
            )))
        }
    })
}

/// The split `date` belongs to, by a hash of the date: 1 in 20 test, 1 in 20 val, the rest
/// train.
pub fn split_of(date: Date) -> Split {
    match mix(date.days() as u64 ^ SPLIT_SALT) % 20 {
        0 => Split::Test,
        1 => Split::Val,
        _ => Split::Train,
    }
}

/// Every date of each split, in order (train, val, test).
fn dates_by_split() -> &'static [Vec<Date>; 3] {
    static DATES: OnceLock<[Vec<Date>; 3]> = OnceLock::new();
    DATES.get_or_init(|| {
        let first = Date {
            year: FIRST_YEAR,
            month: 1,
            day: 1,
        };
        let last = Date {
            year: LAST_YEAR,
            month: 12,
            day: 31,
        };
        let mut by_split: [Vec<Date>; 3] = Default::default();
        for days in first.days()..=last.days() {
            let date = Date::from_days(days);
            by_split[split_of(date).tag() as usize - 1].push(date);
        }
        by_split
    })
}

/// Every date of `split`, in calendar order.
pub fn dates(split: Split) -> &'static [Date] {
    &dates_by_split()[split.tag() as usize - 1]
}

/// One example: a date, the format it is written in, and both texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatePair {
    pub date: Date,
    pub format: usize,
    /// The date as a person writes it.
    pub source: String,
    /// ISO 8601: "2026-11-26".
    pub target: String,
}

/// Example `index` of `split` under `seed`.
pub fn example(seed: u64, split: Split, index: u64) -> DatePair {
    let mut rng = StdRng::seed_from_u64(example_seed(seed, split, index));
    let pool = dates(split);
    let date = pool[rng.random_range(0..pool.len())];
    let format = rng.random_range(0..FORMATS);
    DatePair {
        date,
        format,
        // Every format below FORMATS is written.
        source: write(date, format).unwrap_or_default(),
        target: date.iso(),
    }
}

/// Examples `range` of `split` under `seed`.
pub fn examples(seed: u64, split: Split, range: std::ops::Range<u64>) -> Vec<DatePair> {
    range.map(|i| example(seed, split, i)).collect()
}

/// `text` as source tokens: one per character, a space as [`SPACE`].
pub fn source_tokens(text: &str) -> Vec<String> {
    text.chars()
        .map(|c| {
            if c == ' ' {
                SPACE.to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An ISO date as target tokens: one per character.
pub fn target_tokens(iso: &str) -> Vec<String> {
    iso.chars().map(String::from).collect()
}

/// The source characters: digits, `a`–`z`, `A`–`Z`, `,` `.` `/` `-` and [`SPACE`].
pub fn source_vocab() -> Result<Vocab> {
    let chars = ('0'..='9')
        .chain('a'..='z')
        .chain('A'..='Z')
        .chain([',', '.', '/', '-'])
        .map(String::from);
    Vocab::new(chars.chain([SPACE.to_string()]))
}

/// The target characters: digits and `-`.
pub fn target_vocab() -> Result<Vocab> {
    Vocab::new(('0'..='9').chain(['-']).map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_weekdays_are_right() {
        for days in -10_000..30_000 {
            assert_eq!(Date::from_days(days).days(), days);
        }
        let d = Date::new(2026, 11, 26).unwrap();
        assert_eq!(WEEKDAYS[d.weekday()], "Thursday");
        assert_eq!(
            WEEKDAYS[Date::new(2000, 2, 29).unwrap().weekday()],
            "Tuesday"
        );
        assert_eq!(WEEKDAYS[Date::new(1950, 1, 1).unwrap().weekday()], "Sunday");
        assert!(Date::new(2023, 2, 29).is_err());
        assert!(Date::new(2050, 1, 1).is_err());
        assert!(Date::new(2024, 4, 31).is_err());
    }

    #[test]
    fn the_table_in_the_docs_is_what_write_writes() {
        let a = Date::new(2026, 11, 26).unwrap();
        let b = Date::new(2026, 1, 5).unwrap();
        let w = |d, f| write(d, f).unwrap();
        assert_eq!(w(a, 0), "Thursday, November 26, 2026");
        assert_eq!(w(a, 4), "nov 26th 2026");
        assert_eq!(w(a, 7), "26th of November 2026");
        assert_eq!(w(a, 12), "11/26/26");
        assert_eq!(w(b, 14), "1/5/2026");
        assert_eq!(w(b, 17), "5.1.2026");
        assert_eq!(w(a, 20), "20261126");
        assert_eq!(w(a, 23), "the 26th of november, 2026");
        assert_eq!(w(b, 1), "Mon, Jan 5, 2026");
        assert!(write(a, FORMATS).is_err());
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31].map(ordinal),
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"]
        );
    }
}
