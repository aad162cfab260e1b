//! Compiles every `kernels/*.cu` with NVRTC to PTX (compute_80) and CUBIN (sm_90), keeps the
//! ptxas log, and embeds sources and images in `$OUT_DIR/kernels.rs`. Without NVRTC the build
//! warns and embeds the sources only; the runtime then compiles them on first use. A real
//! compile error fails the build.
//!
//! The same file gets the Rust side of what the kernels define: a typed id per entry point
//! family (`ids::<file>::<OP_VARIANT>`, with the dtypes it is stamped for) read from the
//! sources, and the codes of kernels/codes.cuh (`codes::NAME`), so neither is written twice.

#[allow(dead_code)]
#[path = "src/nvrtc/compile.rs"]
mod compile;
#[allow(dead_code)]
#[path = "src/nvrtc/locate.rs"]
mod locate;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

const PTX_ARCH: &str = "compute_80";
const CUBIN_ARCH: &str = "sm_90";

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=kernels");
    for var in ["FUSED_RNN_NVRTC_DIR", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // A path that does not exist would make cargo rerun this script on every build.
    if root.join(".cuda/nvidia/cu13/lib").is_dir() {
        println!("cargo:rerun-if-changed=.cuda/nvidia/cu13/lib");
    }

    let kernels = kernel_files(&root.join("kernels"));
    let nvrtc_dir = locate::preload(&locate::candidate_dirs(Some(&root)));
    // SAFETY: only probes whether the library can be opened.
    let nvrtc = nvrtc_dir.is_some() || unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if let Some(dir) = &nvrtc_dir {
        println!(
            "cargo:rustc-env=FUSED_RNN_BUILD_NVRTC_DIR={}",
            dir.display()
        );
    }
    if !nvrtc {
        println!(
            "cargo:warning=NVRTC not found: kernels are embedded as source and compiled at run \
             time (install it with the pip line in README.md to precompile them)"
        );
    }

    let mut table = String::from("pub static KERNELS: &[KernelImage] = &[\n");
    for path in &kernels {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let source = flatten(path);
        let src_path = out.join(format!("{name}.cu"));
        fs::write(&src_path, &source).unwrap();
        let (ptx, cubin, stats) = if nvrtc {
            let ptx = compile::compile(&source, &format!("{name}.cu"), PTX_ARCH)
                .unwrap_or_else(|log| panic!("NVRTC failed on kernels/{name}.cu:\n{log}"));
            let cubin = compile::compile(&source, &format!("{name}.cu"), CUBIN_ARCH)
                .unwrap_or_else(|log| panic!("NVRTC failed on kernels/{name}.cu:\n{log}"));
            fs::write(out.join(format!("{name}.ptx")), &ptx.image).unwrap();
            fs::write(out.join(format!("{name}.cubin")), &cubin.image).unwrap();
            fs::write(out.join(format!("{name}.ptxas.log")), &cubin.log).unwrap();
            let stats = compile::parse_ptxas_log(&cubin.log);
            for s in stats
                .iter()
                .filter(|s| s.spill_store_bytes + s.spill_load_bytes > 0)
            {
                println!(
                    "cargo:warning={}: {} bytes spill stores, {} bytes spill loads",
                    s.name, s.spill_store_bytes, s.spill_load_bytes
                );
            }
            (
                format!("Some(include_str!({:?}))", out.join(format!("{name}.ptx"))),
                format!(
                    "Some(include_bytes!({:?}))",
                    out.join(format!("{name}.cubin"))
                ),
                stats,
            )
        } else {
            ("None".into(), "None".into(), Vec::new())
        };
        let mut stats_src = String::new();
        for s in &stats {
            write!(
                stats_src,
                "PrecompiledFunction {{ name: {:?}, registers: {}, stack_bytes: {}, \
                 spill_store_bytes: {}, spill_load_bytes: {} }}, ",
                s.name, s.registers, s.stack_bytes, s.spill_store_bytes, s.spill_load_bytes
            )
            .unwrap();
        }
        writeln!(
            table,
            "    KernelImage {{ name: {name:?}, source: include_str!({src_path:?}), \
             ptx: {ptx}, cubin: {cubin}, cubin_arch: {CUBIN_ARCH:?}, functions: &[{stats_src}] }},"
        )
        .unwrap();
    }
    table.push_str("];\n");
    table.push_str(&kernel_ids(&kernels));
    table.push_str(&codes(&root.join("kernels/codes.cuh")));
    fs::write(out.join("kernels.rs"), table).unwrap();
}

const DTYPES: [(&str, &str); 3] = [("f32", "F32"), ("f16", "F16"), ("bf16", "BF16")];

/// `ids::<file>::<OP_VARIANT>` for every entry point of every kernel file, and `ENTRIES`.
/// An entry is `{op_variant}_{dtype}` written out, or `{op_variant}_##S` inside a macro that
/// `FOR_EACH_DTYPE` (every dtype) or a direct `MACRO(f32, float)` (that one) stamps.
fn kernel_ids(files: &[PathBuf]) -> String {
    let mut ids = String::from("/// Every entry point family, by kernel file.\npub mod ids {\n");
    let mut all = Vec::new();
    for path in files {
        let file = path.file_stem().unwrap().to_str().unwrap();
        let source = fs::read_to_string(path).unwrap();
        let mut families: Vec<(String, Vec<&str>)> = Vec::new();
        let mut add =
            |op: String, dtype: &'static str| match families.iter_mut().find(|f| f.0 == op) {
                Some(f) if !f.1.contains(&dtype) => f.1.push(dtype),
                Some(_) => {}
                None => families.push((op, vec![dtype])),
            };
        let mut rest = source.as_str();
        while let Some(at) = rest.find("__global__ void") {
            let before = &source[..source.len() - rest.len() + at];
            rest = &rest[at + "__global__ void".len()..];
            let mut name = rest.trim_start();
            if let Some(bounds) = name.strip_prefix("__launch_bounds__(") {
                name = bounds[bounds.find(')').unwrap() + 1..].trim_start();
            }
            let end = name
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '#'))
                .unwrap();
            let name = &name[..end];
            if let Some(op) = name.strip_suffix("_##S") {
                // The macro this entry is defined in, and where it is stamped.
                let define = before.rfind("#define ").expect("a stamping macro");
                let macro_name: String = before[define + 8..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if source.contains(&format!("FOR_EACH_DTYPE({macro_name})")) {
                    DTYPES.iter().for_each(|(d, _)| add(op.to_string(), d));
                }
                for (d, _) in DTYPES {
                    if source.contains(&format!("\n{macro_name}({d},")) {
                        add(op.to_string(), d);
                    }
                }
            } else if let Some((op, d)) = DTYPES
                .iter()
                .find_map(|(d, _)| name.strip_suffix(&format!("_{d}")).map(|op| (op, *d)))
            {
                add(op.to_string(), d);
            } else {
                panic!("kernels/{file}.cu: entry point `{name}` is not {{op_variant}}_{{dtype}}");
            }
        }
        writeln!(ids, "    pub mod {file} {{").unwrap();
        for (op, dtypes) in &families {
            let dtypes: Vec<String> = dtypes
                .iter()
                .map(|d| {
                    let variant = DTYPES.iter().find(|(s, _)| s == d).unwrap().1;
                    format!("crate::dtype::DType::{variant}")
                })
                .collect();
            writeln!(
                ids,
                "        pub const {}: crate::device::kernels::Kernel = \
                 crate::device::kernels::Kernel {{ file: {file:?}, op_variant: {op:?}, \
                 dtypes: &[{}] }};",
                op.to_uppercase(),
                dtypes.join(", ")
            )
            .unwrap();
            all.push(format!("ids::{file}::{}", op.to_uppercase()));
        }
        ids.push_str("    }\n");
    }
    ids.push_str("}\n\n/// Every entry point family of every kernel file.\n");
    writeln!(
        ids,
        "pub static ENTRIES: &[Kernel] = &[{}];",
        all.join(", ")
    )
    .unwrap();
    ids
}

/// `codes::NAME` for every `#define NAME <integer>` of kernels/codes.cuh.
fn codes(path: &Path) -> String {
    let mut out = String::from(
        "/// The codes and sizes kernels/codes.cuh defines for both sides.\npub mod codes {\n",
    );
    for line in fs::read_to_string(path).unwrap().lines() {
        let mut words = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(value), None) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let value: i64 = value.parse().unwrap_or_else(|_| {
                panic!("kernels/codes.cuh: {name} = {value} is not an integer")
            });
            writeln!(out, "    pub const {name}: i32 = {value};").unwrap();
        }
    }
    out.push_str("}\n");
    out
}

fn kernel_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("kernels/ folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    files
}

/// Inlines `#include "x.cuh"` from kernels/ so that each kernel is one self-contained source:
/// runtime NVRTC then needs no include paths.
fn flatten(path: &Path) -> String {
    let dir = path.parent().unwrap();
    let text = fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let quoted = line
            .trim()
            .strip_prefix("#include \"")
            .and_then(|r| r.strip_suffix('"'));
        match quoted {
            Some(header) => {
                out.push_str(&format!("// ---- begin {header}\n"));
                out.push_str(&flatten(&dir.join(header)));
                out.push_str(&format!("// ---- end {header}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
