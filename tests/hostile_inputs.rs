//! `fused-rnn run` against malformed and hostile files: zero-width and overflowing shapes,
//! results too large for memory, thousands of layers, control characters in names, endless
//! and lying files, failing writes, signals mid-write, and non-finite inputs. Each ends in
//! exit 0, or exit 2 with one line, no output file and any existing output untouched.

mod common;

use common::cli::{
    assert_fails, bin, bounded, limited, run, write, write_raw, write_with_metadata, Data,
};
use std::ffi::OsStr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn f32s(n: usize, seed: u64) -> Data {
    Data::F32(common::random(n, 1.0, seed))
}

/// The files of one case in a fresh folder: weights, input, output.
fn files(test: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = common::scratch(test);
    (
        dir.join("w.safetensors"),
        dir.join("x.safetensors"),
        dir.join("y.safetensors"),
    )
}

/// Dot attention's weights: no tensors, metadata kind = dot.
fn dot_attention(path: &Path) {
    write_with_metadata(path, &[], &[("kind", "dot")]);
}

/// `fused-rnn run --device cpu` under a shell's limits (`ulimit` arguments, e.g. "-v 1048576"),
/// within a minute.
fn run_limited(limits: &str, w: &Path, x: &Path, y: &Path, extra: &[&str]) -> Output {
    let mut command = limited(limits);
    command
        .args(["run", "--device", "cpu", "--weights"])
        .args([w.as_os_str(), OsStr::new("--input"), x.as_os_str()])
        .args([OsStr::new("--output"), y.as_os_str()])
        .args(extra);
    bounded(command, Duration::from_secs(60)).unwrap()
}

#[test]
fn zero_width_attention_dimensions_are_errors() {
    let (w, x, y) = files("hostile-zero");
    // General attention with Dk = 0.
    write(&w, &[("key_proj.weight", vec![4, 0], f32s(0, 1))]);
    write(
        &x,
        &[
            ("query", vec![1, 4], f32s(4, 2)),
            ("keys", vec![1, 3, 0], f32s(0, 3)),
        ],
    );
    assert_fails(&run(&w, &x, &y, &[]), &y, &["key_proj.weight", "[4, 0]"]);
    // Additive with Dq = 0, then with attention width A = 0.
    write(
        &w,
        &[
            ("query_proj.weight", vec![6, 0], f32s(0, 1)),
            ("key_proj.weight", vec![6, 7], f32s(42, 2)),
            ("score.weight", vec![1, 6], f32s(6, 3)),
        ],
    );
    write(
        &x,
        &[
            ("query", vec![2, 0], f32s(0, 4)),
            ("keys", vec![2, 9, 7], f32s(126, 5)),
        ],
    );
    assert_fails(&run(&w, &x, &y, &[]), &y, &["query_proj.weight", "[6, 0]"]);
    write(
        &w,
        &[
            ("score.weight", vec![1, 0], f32s(0, 1)),
            ("query_proj.weight", vec![0, 5], f32s(0, 2)),
            ("key_proj.weight", vec![0, 7], f32s(0, 3)),
            ("query_proj.bias", vec![0], f32s(0, 4)),
            ("key_proj.bias", vec![0], f32s(0, 5)),
        ],
    );
    write(
        &x,
        &[
            ("query", vec![2, 5], f32s(10, 4)),
            ("keys", vec![2, 9, 7], f32s(126, 5)),
        ],
    );
    assert_fails(&run(&w, &x, &y, &[]), &y, &["score.weight", "[1, 0]"]);
    // Dot attention with D = 0 and a limit that lets the size through, and with Dv = 0.
    dot_attention(&w);
    write(
        &x,
        &[
            ("query", vec![1, 4096, 0], f32s(0, 1)),
            ("keys", vec![1, 1 << 20, 0], f32s(0, 2)),
        ],
    );
    let big = ["--max-output", "1024T"];
    assert_fails(&run(&w, &x, &y, &big), &y, &["keys", "Dk ≥ 1"]);
    write(
        &x,
        &[
            ("query", vec![2, 3], f32s(6, 1)),
            ("keys", vec![2, 4, 3], f32s(24, 2)),
            ("values", vec![2, 4, 0], f32s(0, 3)),
        ],
    );
    assert_fails(&run(&w, &x, &y, &[]), &y, &["values", "Dv ≥ 1"]);
}

#[test]
fn overflowing_and_huge_results_are_refused_before_any_work() {
    let (w, x, y) = files("hostile-huge");
    dot_attention(&w);
    // B·Tq·L overflows usize: a 168-byte file.
    write(
        &x,
        &[
            ("query", vec![1, 1 << 44, 0], f32s(0, 1)),
            ("keys", vec![1, 1 << 20, 0], f32s(0, 2)),
        ],
    );
    assert_fails(&run(&w, &x, &y, &[]), &y, &["weights", "2^64"]);
    // 16 GiB of attention weights from a 160-byte file, and from a real 4 MB one.
    write(
        &x,
        &[
            ("query", vec![1, 4096, 0], f32s(0, 1)),
            ("keys", vec![1, 1 << 20, 0], f32s(0, 2)),
        ],
    );
    assert_fails(&run(&w, &x, &y, &[]), &y, &["16.0 GiB", "--max-output"]);
    write(
        &x,
        &[
            ("query", vec![1, 4096, 1], f32s(4096, 1)),
            ("keys", vec![1, 1 << 20, 1], f32s(1 << 20, 2)),
        ],
    );
    assert_fails(&run(&w, &x, &y, &[]), &y, &["weights [1, 4096, 1048576]"]);
    // An RNN whose 4 GiB output (and working buffers) exceed the default limit under a 2 GiB
    // address space: the limit comes from the process's own limits.
    write(
        &w,
        &[
            ("weight_ih_l0", vec![1024, 1], f32s(1024, 1)),
            ("weight_hh_l0", vec![1024, 1024], f32s(1 << 20, 2)),
        ],
    );
    write(&x, &[("input", vec![1 << 20, 1, 1], f32s(1 << 20, 3))]);
    let out = run_limited("-v 2097152", &w, &x, &y, &[]);
    assert_fails(
        &out,
        &y,
        &["output [1048576, 1, 1024]", "address-space limit"],
    );
    // --max-output decides either way.
    let case = common::fixtures("rnn").join("tanh_l1_lens");
    let (cw, cx) = (
        case.join("weights.safetensors"),
        case.join("input.safetensors"),
    );
    assert_fails(
        &run(&cw, &cx, &y, &["--max-output", "1K"]),
        &y,
        &["output [8, 5, 7]", "--max-output 1.0 KiB"],
    );
    assert!(run(&cw, &cx, &y, &["--max-output", "1M"]).status.success());
    assert_fails(
        &run(&cw, &cx, &dir_of(&y).join("z"), &["--max-output", "lots"]),
        &dir_of(&y).join("z"),
        &["lots"],
    );
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap()
}

/// A header (and data) of `layers` RNN layers with I = H = 1 and no bias, plus `extra` names.
fn many_layers(path: &Path, layers: usize, extra: &[&str]) {
    let mut entries = Vec::new();
    let mut names: Vec<String> = (0..layers)
        .flat_map(|l| [format!("weight_ih_l{l}"), format!("weight_hh_l{l}")])
        .collect();
    names.extend(extra.iter().map(|s| s.to_string()));
    for (k, name) in names.iter().enumerate() {
        entries.push(format!(
            r#""{name}":{{"dtype":"F32","shape":[1,1],"data_offsets":[{},{}]}}"#,
            4 * k,
            4 * k + 4
        ));
    }
    let data: Vec<u8> = (0..names.len())
        .flat_map(|_| 0.5f32.to_le_bytes())
        .collect();
    write_raw(path, None, &format!("{{{}}}", entries.join(",")), &data);
}

#[test]
fn many_layers_and_a_stray_name_are_checked_in_linear_time() {
    let (w, x, y) = files("hostile-layers");
    write(&x, &[("input", vec![3, 2, 1], f32s(6, 1))]);
    // 200,001 names: comparing each with each would take minutes; a set takes about a second.
    many_layers(&w, 100_000, &["zz_stray"]);
    let limit = Duration::from_secs(30);
    let start = Instant::now();
    assert_fails(
        &run(&w, &x, &y, &[]),
        &y,
        &["zz_stray", "num_layers=100000"],
    );
    assert!(start.elapsed() < limit, "took {:?}", start.elapsed());
    many_layers(&w, 100_000, &[]);
    let start = Instant::now();
    let out = run(&w, &x, &y, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < limit, "took {:?}", start.elapsed());
}

/// Exit 2 and a single line with no control character but its newline.
fn assert_inert(out: &Output, y: &Path, mentions: &[&str]) {
    assert_fails(out, y, mentions);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = stderr.strip_suffix('\n').unwrap();
    assert!(!text.chars().any(char::is_control), "{stderr:?}");
}

#[test]
fn text_from_files_is_printed_escaped() {
    let (w, x, y) = files("hostile-text");
    write(&x, &[("input", vec![2, 1, 4], f32s(8, 1))]);
    let rnn = |extra: Vec<(&'static str, Vec<usize>, Data)>| {
        let mut t = vec![
            ("weight_ih_l0", vec![3, 4], f32s(12, 2)),
            ("weight_hh_l0", vec![3, 3], f32s(9, 3)),
        ];
        t.extend(extra);
        t
    };
    let evil = "evil\nsecond line \x1b[31mRED\x1b[0m\u{202e}";
    write(&w, &rnn(vec![(evil, vec![1], f32s(1, 4))]));
    let escaped = r"`evil\nsecond line \u{1b}[31mRED\u{1b}[0m\u{202e}`";
    assert_inert(&run(&w, &x, &y, &[]), &y, &[escaped]);
    for (key, value, shown) in [
        ("nonlinearity", "tanh\nINJECTED", r"`tanh\nINJECTED`"),
        ("batch_first", "true\x1b[2J", r"`true\u{1b}[2J`"),
    ] {
        write_with_metadata(&w, &rnn(vec![]), &[(key, value)]);
        assert_inert(&run(&w, &x, &y, &[]), &y, &[key, shown]);
    }
    // Attention: its kind and scale metadata, and a stray input name.
    for (key, value) in [("kind", "dot\r\x07"), ("scale", "1\u{2066}")] {
        write_with_metadata(&w, &[], &[("kind", "dot"), (key, value)]);
        assert_inert(&run(&w, &x, &y, &[]), &y, &[key]);
    }
    dot_attention(&w);
    write(&x, &[("query\u{1b}", vec![1, 2], f32s(2, 1))]);
    assert_inert(&run(&w, &x, &y, &[]), &y, &[r"`query\u{1b}`"]);
}

#[test]
fn endless_and_lying_files_are_read_only_as_far_as_declared() {
    let (_, x, y) = files("hostile-endless");
    let case = common::fixtures("rnn").join("tanh_l1_lens");
    let cw = case.join("weights.safetensors");
    // Endless devices under a 1 GiB address space: a bounded read, a clean error.
    for device in ["/dev/zero", "/dev/urandom"] {
        let out = run_limited("-v 1048576", &cw, Path::new(device), &y, &[]);
        assert_fails(&out, &y, &[device, "not a valid safetensors file"]);
    }
    // A directory.
    assert_fails(&run(&cw, dir_of(&y), &y, &[]), &y, &["directory"]);
    // Headers that lie about their own length, or about the data that follows.
    let header = r#"{"input":{"dtype":"F32","shape":[2,1,5],"data_offsets":[0,40]}}"#;
    let data: Vec<u8> = (0..10).flat_map(|k| (k as f32).to_le_bytes()).collect();
    let cases: [(Option<u64>, &[u8], &str); 5] = [
        (Some(u64::MAX), &data, "over the format's limit"),
        (Some(header.len() as u64 + 1000), &data, "truncated"),
        (None, &data[..37], "truncated"),
        (None, &[data.as_slice(), &[0; 8]].concat(), "8 bytes follow"),
        (Some(3), &data, "not a valid safetensors file"),
    ];
    for (declared, data, says) in cases {
        write_raw(&x, declared, header, data);
        assert_fails(&run(&cw, &x, &y, &[]), &y, &["x.safetensors", says]);
    }
    // 2^40 bytes declared by a 100-byte file: refused before reading.
    let header =
        r#"{"input":{"dtype":"F32","shape":[262144,1048576,1],"data_offsets":[0,1099511627776]}}"#;
    write_raw(&x, None, header, &data);
    let out = run_limited("-v 1048576", &cw, &x, &y, &[]);
    assert_fails(&out, &y, &["truncated", "1099511627776"]);
}

#[test]
fn write_failures_say_so_and_leave_existing_files_alone() {
    let (_, _, y) = files("hostile-write");
    let dir = dir_of(&y);
    let case = common::fixtures("rnn").join("tanh_l1_lens");
    let (cw, cx) = (
        case.join("weights.safetensors"),
        case.join("input.safetensors"),
    );
    let missing = dir.join("missing/y.safetensors");
    assert_fails(&run(&cw, &cx, &missing, &[]), &missing, &["cannot write"]);
    // A path below a regular file (as root, permissions would not stop the write).
    std::fs::write(dir.join("plain"), b"x").unwrap();
    let below = dir.join("plain/y.safetensors");
    assert_fails(&run(&cw, &cx, &below, &[]), &below, &["cannot write"]);
    // A directory and a pipe are never replaced.
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let out = run(&cw, &cx, &sub, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write"));
    assert!(sub.is_dir());
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = run(&cw, &cx, &fifo, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A file-size limit: the write fails (EFBIG), the process is not killed mid-file, and an
    // existing output keeps its bytes.
    std::fs::write(&y, b"previous").unwrap();
    let out = run_limited("-f 1", &cw, &cx, &y, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot write") && stderr.contains("y.safetensors"));
    assert_eq!(std::fs::read(&y).unwrap(), b"previous");
    assert_no_temporary_files(dir);
    // A failing run of any kind leaves it alone too.
    let out = run(&cw, &dir.join("absent.safetensors"), &y, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(&y).unwrap(), b"previous");
}

fn assert_no_temporary_files(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_interrupted_run_leaves_no_file() {
    let (w, x, y) = files("hostile-signal");
    let dir = dir_of(&y);
    // 200 MB of attention weights from 60 KB of input: the write takes a while.
    dot_attention(&w);
    write(
        &x,
        &[
            ("query", vec![1, 5000, 1], f32s(5000, 1)),
            ("keys", vec![1, 10000, 1], f32s(10000, 2)),
        ],
    );
    for (signal, existing) in [("TERM", None), ("INT", Some(b"previous".as_slice()))] {
        if let Some(bytes) = existing {
            std::fs::write(&y, bytes).unwrap();
        }
        let mut command = bin();
        command
            .args(["run", "--device", "cpu", "--weights"])
            .args([w.as_os_str(), OsStr::new("--input"), x.as_os_str()])
            .args([OsStr::new("--output"), y.as_os_str()])
            .stderr(Stdio::piped());
        let child = command.spawn().unwrap();
        // The temporary file appears once the result is computed; signal while it is written.
        let start = Instant::now();
        while !std::fs::read_dir(dir)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        {
            assert!(start.elapsed() < Duration::from_secs(120), "no write began");
            std::thread::sleep(Duration::from_micros(200));
        }
        let sent = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "SIG{signal}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert_no_temporary_files(dir);
        match existing {
            Some(bytes) => assert_eq!(std::fs::read(&y).unwrap(), bytes),
            None => assert!(!y.exists()),
        }
    }
}

#[test]
fn non_finite_inputs_are_refused_unless_allowed() {
    let (_, x, y) = files("hostile-nan");
    let case = common::fixtures("rnn").join("tanh_l1_lens");
    let cw = case.join("weights.safetensors");
    // T = 8, B = 5, I = 5: NaN at [2, 1, 3].
    let mut input = common::random(200, 1.0, 1);
    input[(2 * 5 + 1) * 5 + 3] = f32::NAN;
    write(&x, &[("input", vec![8, 5, 5], Data::F32(input.clone()))]);
    assert_fails(
        &run(&cw, &x, &y, &[]),
        &y,
        &["input", "NaN at [2, 1, 3]", "--allow-nonfinite"],
    );
    let h0 = [vec![1.0; 34], vec![f32::INFINITY]].concat();
    let clean = common::random(200, 1.0, 1);
    write(
        &x,
        &[
            ("input", vec![8, 5, 5], Data::F32(clean)),
            ("h0", vec![1, 5, 7], Data::F32(h0)),
        ],
    );
    assert_fails(&run(&cw, &x, &y, &[]), &y, &["h0", "inf at [0, 4, 6]"]);
    // Passed through on request: NaN stays in its own row from its step on.
    write(&x, &[("input", vec![8, 5, 5], Data::F32(input))]);
    let out = run(&cw, &x, &y, &["--allow-nonfinite"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = fused_rnn::io::TensorFile::load(&y)
        .unwrap()
        .float("output")
        .unwrap();
    let output = output.to_vec_f32().unwrap();
    for (k, v) in output.iter().enumerate() {
        let (t, b) = (k / 35, k / 7 % 5);
        assert_eq!(
            v.is_nan(),
            b == 1 && t >= 2,
            "output[{t}, {b}, {}] = {v}",
            k % 7
        );
    }
    std::fs::remove_file(&y).unwrap();
    // A gradient and an attention query.
    let grad = common::fixtures("grad").join("lstm_bi_h0");
    let g = dir_of(&y).join("g.safetensors");
    let mut grad_output = common::random(120, 1.0, 3);
    grad_output[7] = f32::NAN;
    write(
        &g,
        &[("grad_output", vec![5, 3, 8], Data::F32(grad_output))],
    );
    let out = run(
        &grad.join("weights.safetensors"),
        &grad.join("input.safetensors"),
        &y,
        &["--grad", g.to_str().unwrap()],
    );
    assert_fails(&out, &y, &["grad_output", "NaN at [0, 0, 7]"]);
    let attention = common::fixtures("attention").join("additive_tq4_nobias_lens");
    let file = fused_rnn::io::TensorFile::load(attention.join("input.safetensors")).unwrap();
    let keys = file.float("keys").unwrap();
    let mut query = file.float("query").unwrap().to_vec_f32().unwrap();
    query[5] = f32::NEG_INFINITY;
    write(
        &x,
        &[
            ("query", vec![4, 4, 6], Data::F32(query)),
            (
                "keys",
                keys.shape().to_vec(),
                Data::F32(keys.to_vec_f32().unwrap()),
            ),
        ],
    );
    let aw = attention.join("weights.safetensors");
    assert_fails(&run(&aw, &x, &y, &[]), &y, &["query", "-inf at [0, 0, 5]"]);
}
