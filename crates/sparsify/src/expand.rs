//! `sparsify expand`: the dense safetensors file of a compact one, all or nothing (wiring only:
//! the library's [`CompactFile`] reads and checks, [`expand`](data_sparsifier::compact::expand)
//! writes).

use std::path::Path;

use data_sparsifier::compact::{self, CompactFile};
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::error::{CliError, Result};
use crate::report;
use crate::run::{check_outputs, commit_staged, written};

/// What `expand` did.
#[derive(Debug, Clone, Serialize)]
pub struct ExpandReport {
    /// The compact input.
    pub input: String,
    /// The dense output.
    pub output: String,
    /// Tensors written.
    pub tensors: usize,
    /// Compact tables expanded.
    pub tables: usize,
    /// Input file bytes.
    pub input_bytes: u64,
    /// Output tensor data bytes.
    pub output_bytes: u64,
}

impl ExpandReport {
    /// One line of chatter.
    pub fn render(&self) -> String {
        format!(
            "sparsify: expanded {} compact tables of {} ({}) into {} tensors ({}): wrote {}\n",
            self.tables,
            self.input,
            report::bytes(self.input_bytes),
            self.tensors,
            report::bytes(self.output_bytes),
            self.output
        )
    }
}

/// The compact file of a checkpoint, read and checked; errors name the file.
pub fn read_compact<'a>(
    ck: &'a Checkpoint,
) -> Result<CompactFile<'a, data_sparsifier::format::safetensors::SafetensorsSource>> {
    let shown = ck.path().display().to_string();
    CompactFile::read(ck.source(), &shown).map_err(|e| match e {
        e @ data_sparsifier::Error::NotCompact { .. } => CliError::Usage(e.to_string()),
        e => CliError::lib(format!("reading {shown}"), e),
    })
}

/// Runs `sparsify expand INPUT -o OUTPUT`.
pub fn expand(input: &Path, output: &Path, force: bool) -> Result<ExpandReport> {
    check_outputs(input, &[("--output", output)], force)?;
    let ck = Checkpoint::open(input)?;
    let file = read_compact(&ck)?;
    let staged = compact::expand(&file, output).map_err(written(output))?;
    commit_staged(staged, force)?;
    let infos = file.dense_infos();
    Ok(ExpandReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        tensors: infos.len(),
        tables: file.tables().len(),
        input_bytes: ck.file_len() as u64,
        output_bytes: infos.iter().map(|t| t.byte_len() as u64).sum(),
    })
}
