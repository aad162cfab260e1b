//! A property test of `fused-rnn run`: random safetensors files, from well-formed modules and
//! inputs with up to three random corruptions each (shapes, dtypes, offsets, names, metadata,
//! values, declared header lengths, truncations, stray bytes), and random flags. Every run
//! must end in exit 0 with a readable output, or exit 2 with one line, no output file and no
//! temporary file; never a panic, an abort or a signal, within a 2 GiB address space and a
//! minute. `FUSED_RNN_PROPERTY_CASES` sets the number of cases (default 2000) and
//! `FUSED_RNN_PROPERTY_SEED` the seed; a failing case's files are kept and named.

mod common;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// One tensor as the header will declare it; `offsets` overrides the computed ones.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
    offsets: Option<(u64, u64)>,
}

/// A safetensors file to write, and how it lies.
#[derive(Debug, Clone, Default)]
struct File {
    entries: Vec<Entry>,
    metadata: Vec<(String, String)>,
    /// Replaces the 8-byte header length.
    declared: Option<u64>,
    /// Bytes to cut from (negative) or add to (positive) the end.
    resize: i64,
    /// A header byte to overwrite: (position as a fraction of the header, value).
    scribble: Option<(f64, u8)>,
}

const DTYPES: &[&str] = &[
    "F32", "F64", "F16", "BF16", "I64", "I32", "U8", "I8", "BOOL", "F8_E4M3", "U64", "XYZ", "",
];
const DIMS: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    1 << 20,
    1 << 31,
    1 << 44,
    u64::MAX / 2,
    u64::MAX,
];
const NAMES: &[&str] = &[
    "input",
    "h0",
    "c0",
    "lengths",
    "query",
    "keys",
    "values",
    "grad_output",
    "grad_context",
    "weight_ih_l9",
    "bias_hh_l0_reverse",
    "weight_hr_l0",
    "score.weight",
    "",
    "a\nb",
    "\u{1b}[31mred",
    "ü\u{202e}",
];

fn width(dtype: &str) -> Option<u64> {
    match dtype {
        "F64" | "I64" | "U64" => Some(8),
        "F32" | "I32" => Some(4),
        "F16" | "BF16" => Some(2),
        "U8" | "I8" | "BOOL" | "F8_E4M3" => Some(1),
        _ => None,
    }
}

/// Random bytes for `shape` in `dtype` when that is small; floats in [-2, 2), ints in 1..=3.
fn data_for(rng: &mut StdRng, dtype: &str, shape: &[u64]) -> Vec<u8> {
    let count = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    let Some(bytes) = count.zip(width(dtype)).and_then(|(n, w)| n.checked_mul(w)) else {
        return Vec::new();
    };
    if bytes > 1 << 16 {
        return Vec::new();
    }
    let n = (bytes / width(dtype).unwrap()) as usize;
    match dtype {
        "F32" => (0..n)
            .flat_map(|_| rng.random_range(-2f32..2.0).to_le_bytes())
            .collect(),
        "I64" => (0..n)
            .flat_map(|_| rng.random_range(1i64..=3).to_le_bytes())
            .collect(),
        _ => (0..bytes).map(|_| rng.random()).collect(),
    }
}

fn entry(rng: &mut StdRng, name: &str, shape: &[u64]) -> Entry {
    let dtype = if name == "lengths" { "I64" } else { "F32" };
    Entry {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
        data: data_for(rng, dtype, shape),
        offsets: None,
    }
}

/// A feature size: now and then zero, so that zero-width modules and inputs agree.
fn width_size(rng: &mut StdRng) -> u64 {
    if rng.random_bool(0.08) {
        0
    } else {
        rng.random_range(1..=4)
    }
}

/// A count (batch, steps, keys, queries): now and then huge, which a zero width makes
/// representable.
fn count(rng: &mut StdRng) -> u64 {
    if rng.random_bool(0.06) {
        *[1 << 20, 1 << 44].choose(rng).unwrap()
    } else {
        rng.random_range(1..=4)
    }
}

/// A well-formed module's weights, its input and a gradient file for it (well-formed but for
/// the zero widths and huge counts that `width_size` and `count` draw).
fn model(rng: &mut StdRng) -> (File, File, File) {
    let (mut w, mut x, mut g) = (File::default(), File::default(), File::default());
    let b = count(rng);
    if rng.random_bool(0.6) {
        let gates = *[1u64, 3, 4].choose(rng).unwrap();
        let (i, h) = (width_size(rng), width_size(rng));
        let proj = if gates == 4 && h > 1 && rng.random_bool(0.3) {
            rng.random_range(1..h)
        } else {
            0
        };
        let o = if proj > 0 { proj } else { h };
        let (layers, dirs) = (rng.random_range(1..=2u64), rng.random_range(1..=2u64));
        let bias = rng.random_bool(0.7);
        for l in 0..layers {
            for d in 0..dirs {
                let sfx = if d == 0 {
                    format!("l{l}")
                } else {
                    format!("l{l}_reverse")
                };
                let input = if l == 0 { i } else { dirs * o };
                w.entries
                    .push(entry(rng, &format!("weight_ih_{sfx}"), &[gates * h, input]));
                w.entries
                    .push(entry(rng, &format!("weight_hh_{sfx}"), &[gates * h, o]));
                if bias {
                    w.entries
                        .push(entry(rng, &format!("bias_ih_{sfx}"), &[gates * h]));
                    w.entries
                        .push(entry(rng, &format!("bias_hh_{sfx}"), &[gates * h]));
                }
                if proj > 0 {
                    w.entries
                        .push(entry(rng, &format!("weight_hr_{sfx}"), &[o, h]));
                }
            }
        }
        if rng.random_bool(0.3) {
            let v = ["true", "false", "relu", "tanh"].choose(rng).unwrap();
            let key = if rng.random_bool(0.5) {
                "batch_first"
            } else {
                "nonlinearity"
            };
            w.metadata.push((key.into(), v.to_string()));
        }
        let t = count(rng);
        x.entries.push(entry(rng, "input", &[t, b, i]));
        if rng.random_bool(0.4) {
            x.entries.push(entry(rng, "h0", &[layers * dirs, b, o]));
            if gates == 4 {
                x.entries.push(entry(rng, "c0", &[layers * dirs, b, h]));
            }
        }
        if b <= 4 && rng.random_bool(0.4) {
            let mut lengths = entry(rng, "lengths", &[b]);
            lengths.data = (0..b)
                .flat_map(|_| rng.random_range(1..=t.min(1 << 20) as i64).to_le_bytes())
                .collect();
            x.entries.push(lengths);
        }
        g.entries.push(entry(rng, "grad_output", &[t, b, dirs * o]));
    } else {
        let (dq, dk, a) = (width_size(rng), width_size(rng), width_size(rng));
        let kind = *["additive", "general", "dot"].choose(rng).unwrap();
        let dq = match kind {
            "additive" => {
                w.entries.push(entry(rng, "query_proj.weight", &[a, dq]));
                w.entries.push(entry(rng, "key_proj.weight", &[a, dk]));
                w.entries.push(entry(rng, "score.weight", &[1, a]));
                if rng.random_bool(0.5) {
                    w.entries.push(entry(rng, "query_proj.bias", &[a]));
                    w.entries.push(entry(rng, "key_proj.bias", &[a]));
                }
                dq
            }
            "general" => {
                w.entries.push(entry(rng, "key_proj.weight", &[dq, dk]));
                dq
            }
            _ => {
                w.metadata.push(("kind".into(), "dot".into()));
                if rng.random_bool(0.3) {
                    w.metadata.push(("scale".into(), "0.5".into()));
                }
                dk
            }
        };
        let (l, tq) = (count(rng), count(rng));
        let query = if rng.random_bool(0.5) {
            vec![b, dq]
        } else {
            vec![b, tq, dq]
        };
        x.entries.push(entry(rng, "query", &query));
        x.entries.push(entry(rng, "keys", &[b, l, dk]));
        let dv = if rng.random_bool(0.3) {
            let dv = width_size(rng);
            x.entries.push(entry(rng, "values", &[b, l, dv]));
            dv
        } else {
            dk
        };
        let mut context = query.clone();
        *context.last_mut().unwrap() = dv;
        g.entries.push(entry(rng, "grad_context", &context));
    }
    (w, x, g)
}

/// One random corruption of `file`, described.
fn corrupt(rng: &mut StdRng, file: &mut File) -> String {
    let n = file.entries.len();
    let pick = |rng: &mut StdRng| (n > 0).then(|| rng.random_range(0..n));
    match rng.random_range(0..12) {
        0 | 1 => {
            let Some(k) = pick(rng) else {
                return "nothing".into();
            };
            let e = &mut file.entries[k];
            let dim = *DIMS.choose(rng).unwrap();
            if e.shape.is_empty() || rng.random_bool(0.2) {
                e.shape.push(dim);
            } else {
                let d = rng.random_range(0..e.shape.len());
                e.shape[d] = dim;
            }
            if rng.random_bool(0.5) {
                e.data = data_for(rng, &e.dtype.clone(), &e.shape.clone());
            }
            format!("shape of {:?} → {:?}", e.name, e.shape)
        }
        2 => {
            let Some(k) = pick(rng) else {
                return "nothing".into();
            };
            let e = &mut file.entries[k];
            e.dtype = DTYPES.choose(rng).unwrap().to_string();
            if rng.random_bool(0.7) {
                e.data = data_for(rng, &e.dtype.clone(), &e.shape.clone());
            }
            format!("dtype of {:?} → {:?}", e.name, e.dtype)
        }
        3 => {
            let Some(k) = pick(rng) else {
                return "nothing".into();
            };
            let name = if rng.random_bool(0.1) {
                "x".repeat(300)
            } else {
                NAMES.choose(rng).unwrap().to_string()
            };
            file.entries[k].name = name.clone();
            format!("entry {k} renamed {name:?}")
        }
        4 => match pick(rng) {
            Some(k) => format!("dropped {:?}", file.entries.remove(k).name),
            None => "nothing".into(),
        },
        5 => {
            let name = NAMES.choose(rng).unwrap().to_string();
            let shape: Vec<u64> = (0..rng.random_range(0..4))
                .map(|_| rng.random_range(0..4))
                .collect();
            let mut e = entry(rng, &name, &shape);
            e.name = name.clone();
            file.entries.push(e);
            format!("added {name:?} {shape:?}")
        }
        6 => {
            let Some(k) = pick(rng) else {
                return "nothing".into();
            };
            let start = *[0u64, 1, 4, 1 << 40, u64::MAX].choose(rng).unwrap();
            let end = start.wrapping_add(*[0u64, 3, 8, 1 << 33].choose(rng).unwrap());
            file.entries[k].offsets = Some((start, end));
            format!("offsets of entry {k} → [{start}, {end}]")
        }
        7 => {
            let Some(k) = pick(rng) else {
                return "nothing".into();
            };
            let e = &mut file.entries[k];
            let Some(w) = width(&e.dtype).filter(|_| !e.data.is_empty()) else {
                return "nothing".into();
            };
            let at = rng.random_range(0..e.data.len() as u64 / w) as usize * w as usize;
            let bytes: Vec<u8> = match (e.dtype.as_str(), rng.random_range(0..4)) {
                ("F32", 0) => f32::NAN.to_le_bytes().to_vec(),
                ("F32", 1) => f32::INFINITY.to_le_bytes().to_vec(),
                ("F32", _) => 3e38f32.to_le_bytes().to_vec(),
                ("I64", 0) => (-1i64).to_le_bytes().to_vec(),
                ("I64", _) => i64::MAX.to_le_bytes().to_vec(),
                _ => (0..w).map(|_| rng.random()).collect(),
            };
            e.data[at..at + w as usize].copy_from_slice(&bytes);
            format!("value at byte {at} of {:?} → {bytes:?}", e.name)
        }
        8 => {
            let key = *["batch_first", "nonlinearity", "kind", "scale", "x\ny"]
                .choose(rng)
                .unwrap();
            let value = *[
                "true",
                "relu",
                "dot",
                "additive",
                "nan",
                "1e40",
                "",
                "\u{1b}[2J",
            ]
            .choose(rng)
            .unwrap();
            file.metadata.push((key.into(), value.into()));
            format!("metadata {key:?} = {value:?}")
        }
        9 => {
            let lie = *[0u64, 1, 7, 100_000_001, u64::MAX].choose(rng).unwrap();
            file.declared = Some(lie);
            format!("declared header length {lie}")
        }
        10 => {
            file.resize = *[-1i64, -8, -100, 1, 8, 4096].choose(rng).unwrap();
            format!("size changed by {}", file.resize)
        }
        _ => {
            let at = rng.random();
            let byte = *[b'"', b'{', b']', b',', 0xff, 0].choose(rng).unwrap();
            file.scribble = Some((at, byte));
            format!("header byte at {at:.2} → {byte:#x}")
        }
    }
}

/// The file's bytes: the 8-byte header length, the JSON header and the data.
fn bytes(file: &File) -> Vec<u8> {
    let mut header = Vec::new();
    if !file.metadata.is_empty() {
        let pairs: Vec<String> = file
            .metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json(k), json(v)))
            .collect();
        header.push(format!("\"__metadata__\":{{{}}}", pairs.join(",")));
    }
    let (mut data, mut offset) = (Vec::new(), 0u64);
    for e in &file.entries {
        let (start, end) = e.offsets.unwrap_or((offset, offset + e.data.len() as u64));
        let shape: Vec<String> = e.shape.iter().map(u64::to_string).collect();
        header.push(format!(
            "{}:{{\"dtype\":{},\"shape\":[{}],\"data_offsets\":[{start},{end}]}}",
            json(&e.name),
            json(&e.dtype),
            shape.join(",")
        ));
        data.extend_from_slice(&e.data);
        offset += e.data.len() as u64;
    }
    let mut header = format!("{{{}}}", header.join(",")).into_bytes();
    if let Some((at, byte)) = file.scribble {
        let k = ((header.len() - 1) as f64 * at) as usize;
        header[k] = byte;
    }
    let declared = file.declared.unwrap_or(header.len() as u64);
    let mut out = [&declared.to_le_bytes()[..], &header, &data].concat();
    match file.resize {
        r if r < 0 => out.truncate(out.len().saturating_sub(r.unsigned_abs() as usize)),
        r => out.extend((0..r).map(|k| k as u8)),
    }
    out
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Random flags for the run.
fn flags(rng: &mut StdRng) -> Vec<&'static str> {
    let choices: &[&[&str]] = &[
        &["--batch-first"],
        &["--batch-first=false"],
        &["--nonlinearity", "relu"],
        &["--algo", "naive"],
        &["--algo", "auto"],
        &["--dtype", "f16"],
        &["--allow-nonfinite"],
        &["--max-output", "1K"],
        &["--max-output", "1M"],
    ];
    let mut out = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        out.extend_from_slice(choices.choose(rng).unwrap());
    }
    out
}

/// The run under a 2 GiB address space; Err when it was killed after a minute.
fn run_case(dir: &Path, grad: bool, flags: &[&str]) -> Result<Output, String> {
    let mut command = common::cli::limited("-v 2097152");
    command
        .current_dir(dir)
        .args(["run", "--device", "cpu", "--weights", "w", "--input", "x"])
        .args(["--output", "y"])
        .args(if grad { &["--grad", "g"][..] } else { &[] })
        .args(flags);
    common::cli::bounded(command, Duration::from_secs(60))
}

/// What is wrong with a finished run, if anything.
fn verdict(dir: &Path, out: &Output) -> Option<String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let temporary = std::fs::read_dir(dir)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
    if temporary {
        return Some("a temporary file was left behind".into());
    }
    match out.status.code() {
        Some(0) => match fused_rnn::io::TensorFile::load(dir.join("y")) {
            Ok(_) => None,
            Err(e) => Some(format!("exit 0 but the output does not load: {e}")),
        },
        Some(2) => {
            let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
            if !line.starts_with("error: ") || line.chars().any(char::is_control) {
                Some(format!("exit 2 without one clean error line: {stderr:?}"))
            } else if dir.join("y").exists() {
                Some("exit 2 but an output file exists".into())
            } else {
                None
            }
        }
        code => Some(format!(
            "exit {code:?} (a signal, panic or abort): {stderr}"
        )),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

#[test]
fn random_files_end_in_a_result_or_one_error_line() {
    let cases = env_number("FUSED_RNN_PROPERTY_CASES", 2000);
    let seed = env_number("FUSED_RNN_PROPERTY_SEED", 20261206);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = common::scratch("property");
    let mut failures = Vec::new();
    let (mut succeeded, start) = (0, Instant::now());
    for case in 0..cases {
        let (mut w, mut x, mut g) = model(&mut rng);
        let mut changes = Vec::new();
        for _ in 0..rng.random_range(0..=3) {
            let (name, file) = match rng.random_range(0..5) {
                0 | 1 => ("weights", &mut w),
                2 | 3 => ("input", &mut x),
                _ => ("grad", &mut g),
            };
            changes.push(format!("{name}: {}", corrupt(&mut rng, file)));
        }
        let grad = rng.random_bool(0.25);
        let flags = flags(&mut rng);
        for (name, file) in [("w", &w), ("x", &x), ("g", &g)] {
            std::fs::write(dir.join(name), bytes(file)).unwrap();
        }
        let _ = std::fs::remove_file(dir.join("y"));
        let finished = run_case(&dir, grad, &flags);
        succeeded += usize::from(finished.as_ref().is_ok_and(|out| out.status.success()));
        let failure = match &finished {
            Ok(out) => verdict(&dir, out),
            Err(hung) => Some(hung.clone()),
        };
        if let Some(why) = failure {
            let kept = dir.join(format!("case{case}"));
            std::fs::create_dir_all(&kept).unwrap();
            for name in ["w", "x", "g"] {
                std::fs::copy(dir.join(name), kept.join(name)).unwrap();
            }
            failures.push(format!(
                "case {case} (files in {}; grad {grad}, flags {flags:?}, changes {changes:?}): {why}",
                kept.display()
            ));
        }
    }
    eprintln!(
        "{cases} cases (seed {seed}) in {:.1} s: {succeeded} ran, {} refused",
        start.elapsed().as_secs_f64(),
        cases as usize - succeeded
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The generator must reach both outcomes, or the test says little.
    assert!(
        succeeded > cases as usize / 10,
        "only {succeeded} runs succeeded"
    );
    assert!(succeeded < cases as usize, "no run was refused");
}
