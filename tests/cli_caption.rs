//! `fused-rnn caption` on images as a user runs it: the bundled captioner on the digit scenes'
//! test set (the demo), a Karpathy folder's split, loose image files; COCO results and
//! references; the report page opened in headless Chromium (every image loads, every caption is
//! on the page); the bundled translator on held-out dates; bad input refused with one line and
//! exit 2, writing nothing.

mod common;

use common::cli::bin;
use std::path::{Path, PathBuf};
use std::process::Output;

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(args: &[&str], cwd: &Path) -> Output {
    bin().args(args).current_dir(cwd).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = run(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The percentage after `key` in `text` ("exact 97.3% (...)").
fn percent(text: &str, key: &str) -> f64 {
    let rest = &text[text.find(key).unwrap_or_else(|| panic!("{key} in {text}")) + key.len()..];
    rest.trim_start()
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Headless Chromium, when installed; `FUSED_RNN_REQUIRE_CHROMIUM=1` (set by CI) makes its
/// absence a failure instead of a skip.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        let required = std::env::var("FUSED_RNN_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "FUSED_RNN_REQUIRE_CHROMIUM=1 but no chromium on PATH"
        );
        eprintln!("skipping the browser check: no chromium on PATH (Debian: apt install chromium)");
    }
    found
}

/// Opens `dir/index.html` in headless Chromium through a copy that, once the page has loaded,
/// counts the images that did not load; returns (images, broken, the page's text).
fn open_in_browser(browser: &Path, dir: &Path) -> (usize, usize, String) {
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let probe = page.replace(
        "</body>",
        "<pre id=\"probe\"></pre><script>window.addEventListener('load', () => { \
         const all = [...document.images]; \
         const broken = all.filter(i => !(i.complete && i.naturalWidth > 0)); \
         document.getElementById('probe').textContent = 'images ' + all.length + ' broken ' + broken.length; \
         });</script></body>",
    );
    let copy = dir.join("probe.html");
    std::fs::write(&copy, probe).unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", copy.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    std::fs::remove_file(&copy).unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let probe = dom
        .split("<pre id=\"probe\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no probe in the page Chromium rendered: {dom:.500}"));
    let numbers: Vec<usize> = probe.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 2, "{probe}");
    (numbers[0], numbers[1], dom)
}

/// Every `src` of the page names a file in `dir`.
fn sources_exist(dir: &Path) -> usize {
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let sources: Vec<&str> = page
        .split("src=\"")
        .skip(1)
        .map(|r| r.split('"').next().unwrap())
        .collect();
    for s in &sources {
        assert!(dir.join(s).is_file(), "{s} is missing");
    }
    sources.len()
}

#[test]
fn a_karpathy_split_is_captioned_into_coco_files_and_a_page() {
    let dir = common::scratch("cli-caption-folder");
    let data = dir.join("data");
    ok(
        &[
            "data",
            "digits",
            "--train",
            "40",
            "--val",
            "8",
            "--test",
            "12",
            "--out",
            path(&data),
        ],
        &dir,
    );
    let ckpt = dir.join("m.safetensors");
    ok(
        &[
            "train",
            "caption",
            "--data",
            path(&data),
            "--steps",
            "40",
            "--eval-every",
            "1000",
            "--eval-images",
            "8",
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
            "--out",
            path(&ckpt),
        ],
        &dir,
    );
    let stdout = ok(
        &[
            "caption",
            "--weights",
            path(&ckpt),
            "--data",
            path(&data),
            "--split",
            "test",
            "--report",
            "page",
            "--show",
            "3",
        ],
        &dir,
    );
    assert!(
        stdout.contains("captioned 12 images of the test split"),
        "{stdout}"
    );
    assert!(stdout.contains("12 images: exact"), "{stdout}");
    // The image ids are the Karpathy file's imgids; the references its captions.
    let karpathy = json(&data.join("dataset_digits.json"));
    let tests: Vec<&serde_json::Value> = karpathy["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["split"] == "test")
        .collect();
    let results = json(&dir.join("results.json"));
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 12);
    for (r, image) in results.iter().zip(&tests) {
        assert_eq!(r["image_id"], image["imgid"]);
        assert!(r["caption"].is_string());
    }
    let refs = json(&dir.join("references.json"));
    assert_eq!(refs["images"].as_array().unwrap().len(), 12);
    let annotations = refs["annotations"].as_array().unwrap();
    for (a, image) in annotations.iter().zip(&tests) {
        assert_eq!(a["image_id"], image["imgid"]);
        assert_eq!(a["caption"], image["sentences"][0]["raw"]);
    }
    // The page: one input picture per image and one per caption word, all on disk.
    let page = dir.join("page");
    let words: usize = results
        .iter()
        .map(|r| r["caption"].as_str().unwrap().split_whitespace().count())
        .sum();
    assert_eq!(sources_exist(&page), 12 + words);
    if let Some(browser) = chromium() {
        let (images, broken, dom) = open_in_browser(&browser, &page);
        assert_eq!((images, broken), (12 + words, 0));
        for r in results {
            let caption = r["caption"].as_str().unwrap();
            assert!(
                dom.contains(&format!(">{caption}</p>")),
                "{caption} is not on the page"
            );
        }
    }
    // Loose files: captions without references.
    let loose = dir.join("loose");
    std::fs::create_dir(&loose).unwrap();
    let image = data.join("images/test_00000.png");
    let stdout = ok(
        &[
            "caption",
            "--weights",
            path(&ckpt),
            "--images",
            path(&image),
        ],
        &loose,
    );
    assert!(
        stdout.contains("captioned 1 images of the given images"),
        "{stdout}"
    );
    assert_eq!(
        json(&loose.join("results.json")).as_array().unwrap().len(),
        1
    );
    assert!(!loose.join("references.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_caption_input_is_one_line_and_writes_nothing() {
    let dir = common::scratch("cli-caption-bad");
    let text = dir.join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let truncated = dir.join("cut.safetensors");
    std::fs::write(&truncated, [8u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
    for (args, mentions) in [
        (vec!["caption", "--images", "missing.png"], "missing.png"),
        (vec!["caption", "--images", path(&text)], "notes.png"),
        (
            vec!["caption", "--data", path(&empty)],
            "no caption data set",
        ),
        (vec!["caption", "--data", "/no/such/dir"], "/no/such/dir"),
        (vec!["caption", "--split", "dev"], "dev"),
        (
            vec!["caption", "--weights", path(&truncated)],
            "cut.safetensors",
        ),
        (vec!["caption", "--beam", "0"], "beam"),
        (vec!["caption", "--max-len", "0"], "max-len"),
        (vec!["caption", "--limit", "0"], "limit"),
        (vec!["translate", "--beam", "0", "26 nov 2026"], "beam"),
        (vec!["translate", "--count", "0"], "count"),
        (
            vec!["translate", "--weights", path(&truncated), "26 nov 2026"],
            "cut.safetensors",
        ),
        (vec!["translate", &"9".repeat(65)], "64 characters"),
        (
            vec!["translate", "26 ноя 2026"],
            "does not know the character",
        ),
    ] {
        let out = run(&args, &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed more than the error"
        );
        assert!(!dir.join("results.json").exists(), "{args:?} wrote results");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_bundled_captioner_reads_the_test_scenes() {
    let dir = common::scratch("cli-caption-demo");
    let stdout = ok(&["caption", "--report", "report"], &dir);
    assert!(stdout.starts_with("using "), "says which device: {stdout}");
    assert!(stdout.contains("captioned 1000 images of the test split of the bundled digit scenes"));
    // The levels README states for the bundled checkpoint (its scores, rounded down).
    assert!(percent(&stdout, "exact") >= 97.5, "{stdout}");
    assert!(percent(&stdout, "WER") <= 0.6, "{stdout}");
    assert!(
        percent(&stdout, "attention in the digit's box") >= 98.0,
        "{stdout}"
    );
    let results = json(&dir.join("results.json"));
    assert_eq!(results.as_array().unwrap().len(), 1000);
    assert_eq!(results[999]["image_id"], 999);
    let report = dir.join("report");
    let pictures = sources_exist(&report);
    if let Some(browser) = chromium() {
        let (images, broken, _) = open_in_browser(&browser, &report);
        assert_eq!((images, broken), (pictures, 0));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_bundled_translator_reads_held_out_dates() {
    let dir = common::scratch("cli-translate-bundled");
    let stdout = ok(&["translate"], &dir);
    assert!(percent(&stdout, "exact") >= 99.0, "{stdout}");
    let stdout = ok(
        &[
            "translate",
            "Thursday, November 26, 2026",
            "26.11.2026",
            "11/26/26",
        ],
        &dir,
    );
    for text in ["Thursday, November 26, 2026", "26.11.2026", "11/26/26"] {
        assert!(stdout.contains(&format!("{text} → 2026-11-26")), "{stdout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
