//! The `data` command: writes the bundled digit scenes as a caption data set (PNG files and a
//! Karpathy split file), the form every captioning command reads.

use fused_rnn::data::{scenes::SceneGenerator, write_digits_dataset, DatasetSizes};
use fused_rnn::error::Result;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DataCommand {
    /// The digit scenes (3 to 5 handwritten digits on a canvas, captioned left to right):
    /// `images/*.png` and `dataset_digits.json` (splits train, val, test; the test split is
    /// the fixed set of 1,000 scenes; each image's digit boxes under `boxes`).
    Digits(DigitsOptions),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DigitsOptions {
    /// The folder to write (created when missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Training scenes.
    #[arg(long, default_value_t = DatasetSizes::default().train)]
    pub train: usize,
    /// Validation scenes.
    #[arg(long, default_value_t = DatasetSizes::default().val)]
    pub val: usize,
    /// Test scenes: the first of the fixed 1,000.
    #[arg(long, default_value_t = DatasetSizes::default().test)]
    pub test: usize,
    /// The seed of the training and validation scenes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs `command`; returns the line to print.
pub fn data(command: &DataCommand) -> Result<String> {
    match command {
        DataCommand::Digits(o) => {
            let sizes = DatasetSizes {
                train: o.train,
                val: o.val,
                test: o.test,
            };
            let json = write_digits_dataset(&o.out, &SceneGenerator::bundled()?, o.seed, sizes)?;
            Ok(format!(
                "wrote {} training, {} validation and {} test scenes: {}",
                o.train,
                o.val,
                o.test,
                json.display()
            ))
        }
    }
}
