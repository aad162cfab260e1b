//! `fused-rnn`: device and kernel information, running PyTorch modules (RNNs, attention, the
//! show-attend-tell decoder), captioning, the bundled data sets, and a demo.
//!
//! Errors print one line (text from files escaped) and exit with code 2; so does an interrupt
//! (SIGINT, SIGTERM, SIGHUP), after removing any output file still being written. A
//! file-size limit (`ulimit -f`) fails the write instead of killing the process mid-file.

mod caption;
mod caption_images;
mod corpus;
mod data;
mod decoder;
mod limits;
mod report;
mod run;
mod scores;
mod train;
mod translate;

use caption::{caption, CaptionOptions};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use data::{data, DataCommand};
use fused_rnn::device::{driver_version, kernels, Device};
use fused_rnn::error::one_line;
use fused_rnn::nn::{Rnn, RnnConfig};
use fused_rnn::{Algo, DType, Result, Tensor};
use run::{run, RunOptions};
use std::process::ExitCode;
use train::{train, Given, TrainCommand};
use translate::{translate, TranslateOptions};

#[derive(Parser)]
#[command(
    name = "fused-rnn",
    version,
    about = "Fused CUDA kernels for recurrent networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The device, driver, NVRTC and every kernel (precompiled or not, registers, spills).
    Info,
    /// Run a PyTorch RNN, LSTM, GRU, attention or show-attend-tell decoder module (state_dict
    /// in safetensors) on an input file.
    Run(RunOptions),
    /// Caption images with a trained captioner (by default the bundled one, on the digit
    /// scenes' test set) and score them; or decode region features with a decoder.
    Caption(CaptionOptions),
    /// Translate dates as people write them into ISO 8601 (by default with the bundled
    /// translator; no text scores the held-out test dates).
    Translate(TranslateOptions),
    /// Train a captioner or the date translator.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Write a bundled data set in the formats the captioning commands read.
    #[command(subcommand)]
    Data(DataCommand),
    /// A small forward pass on the GPU when there is one, else the CPU; prints what it used.
    Demo,
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = match Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)))
    {
        Ok((mut cli, matches)) => {
            if let (Command::Train(command), Some(("train", train))) =
                (&mut cli.command, matches.subcommand())
            {
                if let Some((_, options)) = train.subcommand() {
                    command.common_mut().given = given(options);
                }
            }
            cli
        }
        // --help and --version print and exit 0; no subcommand prints the help and exits 2.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{}", usage_error(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Info => info(),
        Command::Run(options) => guard_output().and_then(|()| run(&options)).map(|report| {
            eprintln!("{}; {}", report.device_reason, report.module);
            if let Some(dispatch) = &report.dispatch {
                eprintln!("algo: {dispatch}");
            }
        }),
        Command::Caption(options) => guard_output()
            .and_then(|()| caption(&options))
            .map(|reason| reason.iter().for_each(|r| eprintln!("{r}"))),
        Command::Data(command) => guard_output()
            .and_then(|()| data(&command))
            .map(|line| println!("{line}")),
        Command::Translate(options) => translate(&options),
        Command::Train(command) => guard_output()
            .and_then(|()| train(&command))
            .map(|line| eprintln!("{line}")),
        Command::Demo => demo(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

/// Keeps freed memory in the heap instead of returning large blocks to the system: a training
/// step frees and allocates the same megabytes each time, and a fresh mapping pays a page fault
/// for every 4 KiB of them.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// A count of at least 1, refused with the other bad flags before anything runs.
fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(
    text: &str,
) -> std::result::Result<T, String> {
    match text.parse() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

/// The options given on the command line, by their ids.
fn given(matches: &ArgMatches) -> Given {
    Given(
        matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect(),
    )
}

/// clap's message for bad arguments as one line: its lines up to the usage, joined.
fn usage_error(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    one_line(&lines.join(" "))
}

/// On SIGINT, SIGTERM or SIGHUP: remove the output being written, say so, exit 2. Past a
/// file-size limit: a write error (EFBIG) rather than SIGXFSZ's kill.
fn guard_output() -> Result<()> {
    // SAFETY: SIG_IGN installs no handler code, and nothing else here handles SIGXFSZ.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    ctrlc::set_handler(|| {
        // Held to the exit: meanwhile the main thread can neither finish a write nor report one.
        let abandoned = fused_rnn::io::abandon_writes();
        match abandoned.completed {
            0 => eprintln!("error: interrupted; no output file was written"),
            _ => eprintln!("error: interrupted after the output file was written"),
        }
        std::process::exit(2);
    })
    .map_err(|e| fused_rnn::Error::Config(format!("cannot handle interrupts: {e}")))
}

fn info() -> Result<()> {
    let (device, why) = Device::auto();
    println!("device: {}", device.name());
    println!("  {why}");
    match driver_version() {
        Ok((major, minor)) => println!("driver: CUDA {major}.{minor}"),
        Err(e) => println!("driver: none ({e})"),
    }
    match fused_rnn::nvrtc::version() {
        Ok(((major, minor), dir)) => {
            let from = dir.map_or("the system library path".into(), |d| {
                d.display().to_string()
            });
            println!("nvrtc: {major}.{minor} (from {from})")
        }
        Err(e) => println!("nvrtc: none ({e})"),
    }
    println!("kernels:");
    for image in kernels::KERNELS {
        let cuda = device.as_cuda();
        let loaded = match cuda.map(|d| d.module(image.name)) {
            Some(Ok((_, via))) => format!(", loaded via {via:?}"),
            Some(Err(e)) => format!(", failed to load: {e}"),
            None => String::new(),
        };
        let built = match (image.cubin, image.ptx) {
            (Some(_), Some(_)) => {
                format!("precompiled (PTX compute_80, CUBIN {})", image.cubin_arch)
            }
            _ => "not precompiled (NVRTC compiles the source on first use)".into(),
        };
        println!("  {}.cu: {built}{loaded}", image.name);
        for f in image.functions {
            // What the driver reports for the loaded image, where there is a device.
            let loaded = match cuda.map(|d| d.function_resources(image.name, f.name)) {
                Some(Ok((regs, local))) => format!("; loaded: {regs} registers, {local} B local"),
                Some(Err(e)) => format!("; {e}"),
                None => String::new(),
            };
            println!(
                "    {:<28} {:>3} registers, {} B stack, {} B spill stores, {} B spill loads{loaded}",
                f.name, f.registers, f.stack_bytes, f.spill_store_bytes, f.spill_load_bytes
            );
        }
    }
    Ok(())
}

fn demo() -> Result<()> {
    let (device, why) = Device::auto();
    println!("{why}");
    let (t, b, i, h) = (64, 8, 32, 128);
    let mut config = RnnConfig::new(i, h);
    config.num_layers = 2;
    config.bidirectional = true;
    let dtype = if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let rnn = Rnn::random(config, &device, dtype, 7)?.with_algo(Algo::Auto);
    let x: Vec<f32> = (0..t * b * i)
        .map(|k| ((k * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let x = Tensor::from_vec(x, &[t, b, i])?.to(&device, dtype)?;
    let lengths: Vec<usize> = (0..b).map(|r| t - r * 7).collect();
    // The first call loads kernels (and on CUDA captures the sequence); time the second.
    rnn.forward(&x, None, Some(&lengths))?;
    let start = std::time::Instant::now();
    let out = rnn.forward(&x, None, Some(&lengths))?;
    let h_n = out.h_n.to_vec_f32()?;
    let elapsed = start.elapsed();
    let norm = h_n.iter().map(|v| v * v).sum::<f32>().sqrt();
    println!(
        "RNN {i}→{h}, 2 layers, bidirectional, T={t}, B={b}, lengths {lengths:?}, {dtype} on {}",
        device.name()
    );
    println!(
        "output {:?}, h_n {:?}, |h_n| = {norm:.4}, forward {:.3} ms",
        out.output.shape(),
        out.h_n.shape(),
        elapsed.as_secs_f64() * 1e3
    );
    Ok(())
}
