//! `fused-rnn train caption` and `train translate` as a user runs them: a few hundred steps
//! lower the validation loss, the same flags give the same checkpoint byte for byte, a run
//! stopped and resumed ends where an unbroken one does, a data set never seen before (other
//! images, other words) trains without code changes, and bad flags are one line and exit 2.

mod common;

use common::cli::bin;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

/// A small captioner, so that the tests' (lightly optimised) build trains it quickly.
const SMALL: [&str; 10] = [
    "--features",
    "32",
    "--attention",
    "32",
    "--hidden",
    "32",
    "--embed",
    "16",
    "--batch",
    "8",
];

/// Runs `fused-rnn` with `args`, asserting success; its stderr.
fn ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    stderr
}

/// The number after `key` on each evaluation line ("step N (...): ..., validation loss X, ...").
fn values(stderr: &str, key: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| {
            let rest = &l[l.find(key).unwrap_or_else(|| panic!("{key} in {l}")) + key.len()..];
            let number: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            number.parse().unwrap()
        })
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn caption_training_lowers_the_validation_loss_and_repeats_exactly() {
    let dir = common::scratch("cli-train-caption");
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let train = |out: &Path| {
        let mut args = vec![
            "train",
            "caption",
            "--steps",
            "600",
            "--eval-every",
            "200",
            "--eval-images",
            "100",
        ];
        args.extend(SMALL);
        args.extend(["--out", path(out)]);
        ok(&args)
    };
    let stderr = train(&a);
    let losses = values(&stderr, "validation loss");
    assert_eq!(losses.len(), 3, "{stderr}");
    // Below ln 14 = 2.64 (uniform over the vocabulary), and down at each evaluation.
    assert!(
        losses[0] < 2.6 && losses[1] < losses[0] && losses[2] < losses[1],
        "{losses:?}"
    );
    assert!(losses[2] < losses[0] - 0.05, "{losses:?}");
    train(&b);
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "the same flags, the same checkpoint");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Plain, and averaging from step 60 (`--average 0.75` of 240) with AdamW, gentler warps, a
/// lighter attention penalty and another learning rate, so that the run is stopped with the
/// average begun: the state must carry the average, the weights the run was at and every
/// setting, since the resumed command names none of them.
#[test]
fn a_stopped_run_resumes_to_the_same_checkpoint() {
    let plain = resumes_to_the_same_checkpoint("cli-train-resume", &[]);
    let averaged = resumes_to_the_same_checkpoint(
        "cli-train-resume-average",
        &[
            "--average",
            "0.75",
            "--weight-decay",
            "0.5",
            "--augment",
            "0.5",
            "--alpha-c",
            "0.5",
            "--lr",
            "0.002",
        ],
    );
    assert_ne!(
        averaged, plain,
        "the averaged checkpoint holds other weights"
    );
}

/// Trains 240 steps in one go, and again stopped after step 80 and resumed by a command that
/// names only the budget, the evaluation and the checkpoint; asserts both end with the same
/// checkpoint, and returns its bytes.
fn resumes_to_the_same_checkpoint(name: &str, extra: &[&str]) -> Vec<u8> {
    let dir = common::scratch(name);
    let (whole, broken) = (
        dir.join("whole.safetensors"),
        dir.join("broken.safetensors"),
    );
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["train", "caption", "--steps", "240", "--eval-every", "80"]
            .iter()
            .chain(SMALL.iter())
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect();
        a.extend([
            "--eval-images".into(),
            "20".into(),
            "--out".into(),
            path(out).into(),
        ]);
        a
    };
    ok(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    // Killed once the step-80 checkpoint is written (its line follows the write), long before
    // the next one.
    let mut child = bin()
        .args(args(&broken))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.split(b'\n').map(|l| l.unwrap()) {
        let line = String::from_utf8_lossy(&line).into_owned();
        seen.push(line.clone());
        if line.contains("step 80 ") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("step 80 ")), "{seen:?}");
    let stderr = ok(&[
        "train",
        "caption",
        "--steps",
        "240",
        "--eval-every",
        "80",
        "--eval-images",
        "20",
        "--out",
        path(&broken),
        "--resume",
    ]);
    assert!(stderr.contains("step 240 "), "{stderr}");
    assert!(
        !stderr.contains("step 80 ") && stderr.contains("step 160 "),
        "{stderr}"
    );
    let bytes = std::fs::read(&whole).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&broken).unwrap(),
        "stopped and resumed ends where the unbroken run does"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

/// A resumed run continues with its own settings: a flag given that differs from the run's is
/// one line and exit 2, and leaves the checkpoint and its state as they were; one that agrees
/// is accepted.
#[test]
fn a_resumed_run_refuses_settings_it_did_not_start_with() {
    let dir = common::scratch("cli-train-resume-settings");
    let out = dir.join("run.safetensors");
    let o = path(&out);
    let state = dir.join("run.safetensors.state");
    let mut start = vec!["train", "caption", "--steps", "10", "--eval-images", "5"];
    start.extend(SMALL);
    start.extend(["--augment", "0.5", "--out", o]);
    ok(&start);
    let translator = dir.join("dates.safetensors");
    let t = path(&translator);
    let mut translate = vec!["train", "translate", "--steps", "4", "--eval-examples", "5"];
    translate.extend(["--hidden", "32", "--out", t]);
    ok(&translate);
    let files = || [&out, &state, &translator].map(|f| std::fs::read(f).unwrap());
    let before = files();
    let resume = ["--steps", "20", "--resume", "--out"];
    for (flags, named, ckpt) in [
        (vec!["--augment", "1"], "--augment 1", o),
        (vec!["--lr", "0.01"], "--lr 0.01", o),
        (vec!["--batch", "4"], "--batch 4", o),
        (vec!["--seed", "2"], "--seed 2", o),
        (vec!["--conv", "32,64"], "--conv 32,64", o),
        (vec!["--image", "40x80"], "--image 40x80", o),
        (vec!["--train-on-val"], "--train-on-val", o),
        (vec!["--more-digits"], "--more-digits", o),
        (vec!["--data", "/no/such/dir"], "--data /no/such/dir", o),
        (vec!["--hidden", "64"], "--hidden 64", t),
        (vec!["--cell", "lstm"], "--cell lstm", t),
    ] {
        let (command, eval) = match ckpt == t {
            true => ("translate", "--eval-examples"),
            false => ("caption", "--eval-images"),
        };
        let mut args = vec!["train", command, eval, "5"];
        args.extend(&flags);
        args.extend(resume);
        args.push(ckpt);
        let run = bin().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(named) && stderr.contains("what the run started with"),
            "{args:?}: {stderr}"
        );
        assert!(files() == before, "{args:?} changed the run's files");
    }
    // The run's own values, given again, are no conflict.
    let mut same = vec!["train", "caption", "--eval-images", "5", "--augment", "0.5"];
    same.extend(["--features", "32"]);
    same.extend(resume);
    same.push(o);
    let stderr = ok(&same);
    assert!(stderr.contains("step 20 "), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run on a folder keeps the folder by its absolute path: resumed from another directory,
/// with no `--data`, it finds its images; `--data` naming the same folder from there is no
/// conflict, and one naming another folder is.
#[test]
fn a_folder_run_resumes_from_another_directory() {
    let dir = common::scratch("cli-train-resume-folder");
    shapes_dataset(&dir.join("shapes"), 12, 4);
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let run = |cwd: &Path, args: &[&str]| {
        let mut all = vec!["train", "caption", "--eval-images", "4"];
        all.extend(SMALL);
        all.extend(args);
        bin().args(&all).current_dir(cwd).output().unwrap()
    };
    let first = run(
        &dir,
        &[
            "--data",
            "shapes",
            "--steps",
            "10",
            "--out",
            "run.safetensors",
        ],
    );
    assert!(first.status.success(), "{first:?}");
    for (data, steps, good) in [
        (None, "20", true),
        (Some("../shapes"), "30", true),
        (Some("."), "40", false),
    ] {
        let mut args = vec!["--steps", steps, "--resume", "--out", "../run.safetensors"];
        args.extend(data.iter().flat_map(|d| ["--data", *d]));
        let out = run(&elsewhere, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), good, "{data:?}: {stderr}");
        match good {
            true => assert!(
                stderr.contains(&format!("step {steps} ")),
                "{data:?}: {stderr}"
            ),
            false => assert!(stderr.contains("--data"), "{data:?}: {stderr}"),
        }
    }
    // More digits are for the digit scenes: with a folder, one line and nothing written.
    let out = run(
        &dir,
        &[
            "--data",
            "shapes",
            "--more-digits",
            "--steps",
            "10",
            "--out",
            "more.safetensors",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--more-digits"), "{stderr}");
    assert!(!dir.join("more.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes a Karpathy data set of coloured shapes the digit scenes never show: RGB images of
/// 24×40 holding a red, green or blue square, cross or bar; captions "a red cross", "one
/// green bar", ...
fn shapes_dataset(dir: &Path, train: usize, val: usize) {
    use image::ImageEncoder;
    use rand::{Rng, SeedableRng};
    let colours = [
        ("red", [230u8, 40, 40]),
        ("green", [40, 200, 60]),
        ("blue", [50, 80, 230]),
    ];
    let shapes = ["square", "cross", "bar"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    std::fs::create_dir_all(dir.join("pics")).unwrap();
    let mut images = Vec::new();
    for i in 0..train + val {
        let (name, rgb) = colours[rng.random_range(0..3)];
        let shape = shapes[rng.random_range(0..3)];
        let (x0, y0) = (rng.random_range(2..28usize), rng.random_range(2..12usize));
        let mut pixels = vec![20u8; 24 * 40 * 3];
        for y in 0..10 {
            for x in 0..10 {
                let on = match shape {
                    "square" => true,
                    "cross" => x == y || x + y == 9 || x + 1 == y || x == y + 1,
                    _ => (4..6).contains(&y),
                };
                if on {
                    let p = ((y0 + y) * 40 + x0 + x) * 3;
                    pixels[p..p + 3].copy_from_slice(&rgb);
                }
            }
        }
        let file = format!("s{i}.png");
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&pixels, 40, 24, image::ExtendedColorType::Rgb8)
            .unwrap();
        std::fs::write(dir.join("pics").join(&file), bytes).unwrap();
        let article = if rng.random_bool(0.5) { "a" } else { "one" };
        images.push(serde_json::json!({
            "filepath": "pics",
            "filename": file,
            "imgid": 1000 + i,
            "split": if i < train { "train" } else { "val" },
            "sentences": [{"raw": format!("{article} {name} {shape}.")}],
        }));
    }
    let json = serde_json::json!({"dataset": "shapes", "images": images});
    std::fs::write(dir.join("dataset_shapes.json"), json.to_string()).unwrap();
}

#[test]
fn a_data_set_never_seen_before_trains_without_changes() {
    let dir = common::scratch("cli-train-shapes");
    shapes_dataset(&dir.join("data"), 200, 40);
    let out = dir.join("shapes.safetensors");
    let mut args = vec![
        "train",
        "caption",
        "--steps",
        "2000",
        "--eval-every",
        "1000",
        "--eval-images",
        "40",
        "--data",
    ];
    let data = dir.join("data");
    args.extend([path(&data), "--out", path(&out)]);
    args.extend(SMALL);
    let stderr = ok(&args);
    assert!(
        stderr.contains("3×24×40 images"),
        "the colour and size of the data: {stderr}"
    );
    let losses = values(&stderr, "validation loss");
    assert!(losses[1] < 0.5 * losses[0].max(1.0), "{losses:?}");
    // The colour and the shape are named ("a"/"one" is a coin toss, so exact captions are
    // not expected): each caption's last two words.
    let results = dir.join("results.json");
    ok(&[
        "caption",
        "--weights",
        path(&out),
        "--data",
        path(&data),
        "--split",
        "val",
        "--results",
        path(&results),
        "--references",
        path(&dir.join("refs.json")),
    ]);
    let found: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(found.len(), 40);
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("refs.json")).unwrap()).unwrap();
    let truth = |id: &serde_json::Value| -> String {
        let a = refs["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| &a["image_id"] == id)
            .unwrap();
        let words: Vec<&str> = a["caption"].as_str().unwrap().split(' ').collect();
        words[1..].join(" ")
    };
    let right = found
        .iter()
        .filter(|r| {
            let words: Vec<&str> = r["caption"].as_str().unwrap().split(' ').collect();
            words.len() == 3 && words[1..].join(" ") == truth(&r["image_id"]).trim_end_matches('.')
        })
        .count();
    assert!(
        right >= 36,
        "{right} of 40 captions name the colour and shape: {found:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--train-on-val`: the validation images join the training images, their words the
/// vocabulary; without it a word only the validation captions use is not learnt.
#[test]
fn training_on_val_adds_the_validation_images_and_their_words() {
    let dir = common::scratch("cli-train-on-val");
    let data = dir.join("data");
    shapes_dataset(&data, 30, 10);
    // One validation caption names a colour no training caption does.
    let file = data.join("dataset_shapes.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    json["images"][35]["sentences"][0]["raw"] = "a purple bar.".into();
    std::fs::write(&file, json.to_string()).unwrap();
    let out = dir.join("c.safetensors");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "caption", "--steps", "4", "--eval-every", "4"];
        args.extend(["--data", path(&data), "--out", path(&out)]);
        args.extend(SMALL);
        args.extend(extra);
        ok(&args)
    };
    let vocab = |stderr: &str| -> usize {
        let at = stderr
            .find(" V=")
            .unwrap_or_else(|| panic!("V= in {stderr}"))
            + 3;
        let digits: String = stderr[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let plain = train(&[]);
    assert!(
        plain.contains("(30 training, 10 validation and 0 test images)"),
        "{plain}"
    );
    let wide = train(&["--train-on-val"]);
    assert!(
        wide.contains("(40 training, 10 validation and 0 test images)"),
        "{wide}"
    );
    assert!(wide.contains("validation split included"), "{wide}");
    assert_eq!(vocab(&wide), vocab(&plain) + 1, "{plain}\n{wide}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn translation_training_learns_held_out_dates() {
    let dir = common::scratch("cli-train-translate");
    let out = dir.join("dates.safetensors");
    let stderr = ok(&[
        "train",
        "translate",
        "--steps",
        "600",
        "--batch",
        "32",
        "--eval-every",
        "300",
        "--eval-examples",
        "200",
        "--out",
        path(&out),
    ]);
    let exact = values(&stderr, "validation dates: exact");
    assert!(exact[1] >= 90.0, "{stderr}");
    let out = bin()
        .args([
            "translate",
            "--weights",
            path(&out),
            "26 nov 2026",
            "2026/11/26",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("26 nov 2026 → 2026-11-26"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_training_flags_are_one_line_and_exit_2() {
    let dir = common::scratch("cli-train-bad");
    let out = dir.join("x.safetensors");
    let o = path(&out);
    // Counts of 0, each refused by its flag's parser.
    let zeros = [
        ("caption", "--batch"),
        ("caption", "--steps"),
        ("caption", "--eval-every"),
        ("caption", "--eval-images"),
        ("translate", "--eval-examples"),
    ]
    .map(|(task, flag)| (vec!["train", task, "--out", o, flag, "0"], flag));
    for (args, mentions) in zeros.into_iter().chain([
        (
            vec!["train", "caption", "--out", o, "--minutes=-1"],
            "--minutes",
        ),
        (
            vec![
                "train", "caption", "--out", o, "--steps", "5", "--epochs", "1",
            ],
            "cannot be used",
        ),
        (
            vec!["train", "caption", "--out", o, "--data", "/no/such/dir"],
            "/no/such/dir",
        ),
        (
            vec!["train", "caption", "--out", o, "--resume"],
            "x.safetensors",
        ),
        (
            vec!["train", "caption", "--out", o, "--window", "9"],
            "window",
        ),
        (
            vec!["train", "caption", "--out", o, "--conv", "0"],
            "--conv",
        ),
        (
            vec!["train", "caption", "--out", o, "--conv", "16,x"],
            "--conv",
        ),
        (vec!["train", "caption", "--out", o, "--conv", ""], "--conv"),
        (
            vec!["train", "caption", "--out", o, "--conv", "4,4,4,4"],
            "convolutions",
        ),
        (
            vec!["train", "caption", "--out", o, "--augment=-1"],
            "--augment",
        ),
        (
            vec!["train", "caption", "--out", o, "--alpha-c", "NaN"],
            "--alpha-c",
        ),
        (
            vec!["train", "caption", "--out", o, "--average", "1.5"],
            "--average",
        ),
        (
            vec!["train", "translate", "--out", o, "--average=-0.1"],
            "--average",
        ),
        (
            vec!["train", "caption", "--out", o, "--weight-decay=-0.01"],
            "--weight-decay",
        ),
        (
            vec!["train", "translate", "--out", o, "--weight-decay", "inf"],
            "--weight-decay",
        ),
        (
            vec!["train", "translate", "--out", o, "--cell", "rnn"],
            "cell",
        ),
        (vec!["translate", "--weights", o, ""], "no such file"),
    ]) {
        let run = bin().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.to_lowercase().contains(&mentions.to_lowercase()),
            "{args:?}: {stderr}"
        );
        assert!(!out.exists(), "{args:?} wrote a checkpoint");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
