//! Dates: every format reads back (with a reference parser written here, independent of the
//! library) to the same ISO date and the right weekday; examples are deterministic; held-out
//! dates never appear in training.

use fused_rnn::data::dates::{self, Date, FORMATS, SPACE};
use fused_rnn::data::Split;
use fused_rnn::models::{END, START, UNKNOWN};
use std::collections::BTreeSet;

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Zeller's congruence: 0 = Saturday, 1 = Sunday, ..., 6 = Friday.
fn zeller(year: i32, month: u32, day: u32) -> u32 {
    let (y, m) = if month < 3 {
        (year - 1, month + 12)
    } else {
        (year, month)
    };
    let (k, j) = (y.rem_euclid(100) as u32, y.div_euclid(100) as u32);
    (day + 13 * (m + 1) / 5 + k + k / 4 + j / 4 + 5 * j) % 7
}

/// A date as a person might write it → "YYYY-MM-DD". Words name a month (by their first three
/// letters) or a weekday (checked against the date); numbers are the day, the month and the
/// year, ordered by the separator: `/` month first, `.` day first, a four-digit group first
/// the year; eight digits alone are YYYYMMDD; a two-digit year is 1950–2049.
fn reference_parse(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut words = Vec::new();
    let mut numbers: Vec<&str> = Vec::new();
    let mut rest = lower.as_str();
    while let Some(c) = rest.chars().next() {
        let run = |f: fn(char) -> bool| rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        if c.is_ascii_digit() {
            let n = run(|c| c.is_ascii_digit());
            numbers.push(&rest[..n]);
            rest = &rest[n..];
        } else if c.is_ascii_alphabetic() {
            let n = run(|c| c.is_ascii_alphabetic());
            words.push(&rest[..n]);
            rest = &rest[n..];
        } else {
            rest = &rest[c.len_utf8()..];
        }
    }
    let year_of = |s: &str| -> i32 {
        let y: i32 = s.parse().unwrap();
        match s.len() {
            4 => y,
            2 if y < 50 => 2000 + y,
            2 => 1900 + y,
            _ => panic!("year {s} in {text:?}"),
        }
    };
    let month_word = words
        .iter()
        .find_map(|w| MONTHS.iter().position(|m| w.starts_with(m)));
    let (year, month, day) = if let Some(m) = month_word {
        assert_eq!(numbers.len(), 2, "{text:?}");
        let (d, y) = if numbers[0].len() == 4 {
            (numbers[1], numbers[0])
        } else {
            (numbers[0], numbers[1])
        };
        (year_of(y), m as u32 + 1, d.parse().unwrap())
    } else if numbers.len() == 1 && numbers[0].len() == 8 {
        let n = numbers[0];
        (
            year_of(&n[..4]),
            n[4..6].parse().unwrap(),
            n[6..].parse().unwrap(),
        )
    } else {
        assert_eq!(numbers.len(), 3, "{text:?}");
        if numbers[0].len() == 4 {
            let p = |i: usize| numbers[i].parse().unwrap();
            (year_of(numbers[0]), p(1), p(2))
        } else if lower.contains('/') {
            let p = |i: usize| numbers[i].parse().unwrap();
            (year_of(numbers[2]), p(0), p(1))
        } else {
            assert!(lower.contains('.'), "{text:?}");
            let p = |i: usize| numbers[i].parse().unwrap();
            (year_of(numbers[2]), p(1), p(0))
        }
    };
    let weekdays = ["sat", "sun", "mon", "tue", "wed", "thu", "fri"];
    for w in &words {
        if let Some(k) = weekdays.iter().position(|d| w.starts_with(d)) {
            assert_eq!(k as u32, zeller(year, month, day), "weekday of {text:?}");
        }
    }
    format!("{year:04}-{month:02}-{day:02}")
}

#[test]
fn every_format_reads_back_to_the_same_date() {
    let mut dates: Vec<Date> = [
        (1950, 1, 1),
        (2049, 12, 31),
        (2000, 2, 29),
        (2024, 2, 29),
        (1999, 12, 31),
        (2026, 11, 26),
        (2026, 1, 5),
        (2011, 11, 11),
        (2013, 3, 3),
        (1972, 7, 22),
    ]
    .iter()
    .map(|&(y, m, d)| Date::new(y, m, d).unwrap())
    .collect();
    // And a spread of others from every split.
    for split in Split::ALL {
        dates.extend(dates::examples(9, split, 0..100).iter().map(|p| p.date));
    }
    let mut texts = BTreeSet::new();
    for &date in &dates {
        for f in 0..FORMATS {
            let text = dates::write(date, f).unwrap();
            assert_eq!(reference_parse(&text), date.iso(), "format {f}: {text:?}");
            texts.insert((f, text));
        }
    }
    assert!(dates::write(dates[0], FORMATS).is_err());
    // The formats really differ: no two write a date the same way, except where a format
    // without padding meets a date that needs none.
    let d = Date::new(2026, 1, 5).unwrap();
    let all: BTreeSet<String> = (0..FORMATS).map(|f| dates::write(d, f).unwrap()).collect();
    assert_eq!(all.len(), FORMATS);
    assert_eq!(
        reference_parse("Thursday, November 26, 2026"),
        "2026-11-26",
        "the reference itself"
    );
}

#[test]
fn examples_are_deterministic_and_held_out_dates_stay_out_of_training() {
    let train = dates::examples(42, Split::Train, 0..2000);
    assert_eq!(train, dates::examples(42, Split::Train, 0..2000));
    assert_eq!(dates::example(42, Split::Train, 1234), train[1234]);
    assert_ne!(dates::examples(43, Split::Train, 0..50), train[..50]);
    let val = dates::examples(42, Split::Val, 0..500);
    let test = dates::examples(42, Split::Test, 0..500);
    for (split, pairs) in [
        (Split::Train, &train),
        (Split::Val, &val),
        (Split::Test, &test),
    ] {
        for p in pairs.iter() {
            assert_eq!(dates::split_of(p.date), split);
            assert_eq!(p.target, p.date.iso());
            assert_eq!(p.source, dates::write(p.date, p.format).unwrap());
        }
    }
    let set = |pairs: &[dates::DatePair]| pairs.iter().map(|p| p.date).collect::<BTreeSet<_>>();
    let (tr, va, te) = (set(&train), set(&val), set(&test));
    assert!(tr.is_disjoint(&va) && tr.is_disjoint(&te) && va.is_disjoint(&te));
    // Every format and a spread of years appear.
    let formats: BTreeSet<usize> = train.iter().map(|p| p.format).collect();
    assert_eq!(formats.len(), FORMATS);
    let years: BTreeSet<i32> = train.iter().map(|p| p.date.year()).collect();
    assert!(years.len() > 90, "{}", years.len());
    // The split sizes: every date in exactly one, about 5% in val and in test.
    let sizes = Split::ALL.map(|s| dates::dates(s).len());
    assert_eq!(sizes.iter().sum::<usize>(), 36_525);
    assert!(
        (1500..2200).contains(&sizes[1]) && (1500..2200).contains(&sizes[2]),
        "{sizes:?}"
    );
}

#[test]
fn characters_are_the_tokens() {
    let source = dates::source_vocab().unwrap();
    let target = dates::target_vocab().unwrap();
    assert_eq!(target.len(), 4 + 11);
    assert_eq!(source.len(), 4 + 10 + 26 + 26 + 4 + 1);
    let tokens = dates::source_tokens("Nov 26th, 2026");
    assert_eq!(tokens[3], SPACE);
    assert_eq!(tokens.len(), 14);
    // Every character of every format is in the source vocabulary.
    for p in dates::examples(1, Split::Train, 0..3000) {
        let ids = source.encode(&dates::source_tokens(&p.source));
        assert!(!ids.contains(&UNKNOWN), "{:?}", p.source);
        assert_eq!(source.decode(&ids).concat(), p.source.replace(' ', SPACE));
        let t = target.encode(&dates::target_tokens(&p.target));
        assert_eq!((t[0], t[t.len() - 1], t.len()), (START, END, 12));
        assert!(!t.contains(&UNKNOWN));
    }
}
