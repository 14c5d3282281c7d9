//! `sparsify bench`: times the library's `step` and `squash_mask` in-process on a generated table,
//! next to the physical limits measured in the same run: a plain parallel read of the table's bytes
//! (for `step`, which reads the table once) and a plain parallel copy of them (for `squash_mask`,
//! which reads and writes it). Each figure is also given as a ratio to its limit, so results from a
//! busy or a quiet machine compare.

use std::time::Instant;

use data_sparsifier::random::Rng;
use data_sparsifier::{
    with_dtype, Config, DType, DataSparsifier, Element, Parameter, SquashOptions, Tensor,
};
use serde::Serialize;

use crate::alloc;
use crate::error::{CliError, Result};
use crate::report;
use data_sparsifier::norm::{DataNorm, DataNormConfig, DataNormPatch};

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Table rows.
    pub rows: usize,
    /// Table columns.
    pub cols: usize,
    /// Element type.
    pub dtype: DType,
    /// Config (over the built-in defaults).
    pub flags: DataNormPatch,
    /// Timed repeats.
    pub repeat: usize,
    /// Seed of the generated table.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            rows: 1_000_000,
            cols: 64,
            dtype: DType::F32,
            flags: DataNormPatch::default(),
            repeat: 5,
            seed: 0,
        }
    }
}

/// What `bench --report json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Table rows.
    pub rows: usize,
    /// Table columns.
    pub cols: usize,
    /// Element type.
    pub dtype: String,
    /// The config.
    pub config: DataNormConfig,
    /// Timed repeats.
    pub repeat: usize,
    /// Threads available to the library.
    pub threads: usize,
    /// Table size in bytes.
    pub bytes: u64,
    /// Median seconds of `step`.
    pub step_seconds: f64,
    /// Median seconds of `squash_mask`.
    pub squash_seconds: f64,
    /// Table bytes per median `step` second, GB/s.
    pub step_gbps: f64,
    /// Table bytes per median `squash_mask` second, GB/s.
    pub squash_gbps: f64,
    /// Median seconds of a plain parallel read of the table's bytes (the same threads).
    pub read_seconds: f64,
    /// Median seconds of a plain parallel copy of the table's bytes into another buffer.
    pub copy_seconds: f64,
    /// Table bytes per median read second, GB/s: the physical limit of `step`.
    pub read_gbps: f64,
    /// Table bytes per median copy second, GB/s: the physical limit of `squash_mask`.
    pub copy_gbps: f64,
    /// `step` throughput as a fraction of the read's, the median of the per-repeat ratios (each
    /// repeat times the read right before the step).
    pub step_vs_read: f64,
    /// `squash_mask` throughput as a fraction of the copy's, the median of the per-repeat ratios.
    pub squash_vs_copy: f64,
    /// Every repeat's `step` seconds.
    pub step_seconds_all: Vec<f64>,
    /// Every repeat's `squash_mask` seconds.
    pub squash_seconds_all: Vec<f64>,
    /// Peak bytes allocated beyond the table while adding the table, stepping and squashing (the
    /// mask included), the maximum over repeats; null if the counting allocator is not installed.
    pub peak_extra_bytes: Option<u64>,
    /// `peak_extra_bytes / bytes`.
    pub peak_extra_fraction: Option<f64>,
    /// Fraction of elements the mask zeroed.
    pub sparsity: f64,
    /// Seconds spent generating the table (not timed in the results).
    pub generate_seconds: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Bytes of memory available for new allocations, where the platform says (Linux:
/// `MemAvailable` in `/proc/meminfo`).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// What `bench` holds at its peak, as a multiple of the table: the table, the working copy each
/// repeat sparsifies, and the mask and kernel scratch (under a quarter of the table).
const BENCH_MEMORY_FACTOR: (u64, u64) = (9, 4);

/// A `rows x cols` table of standard-normal values.
///
/// A table whose byte size overflows, or that (with the working copy `bench` makes) does not fit
/// in the available memory, or whose allocation fails, is a [`CliError::Usage`] naming the size
/// and the fix, never an abort.
pub fn generate(rows: usize, cols: usize, dtype: DType, seed: u64) -> Result<Tensor> {
    let what = format!("--rows {rows} x --cols {cols} of {dtype}");
    let too_big = |detail: String| {
        CliError::Usage(format!(
            "{what} is {detail}: use a smaller --rows or --cols"
        ))
    };
    let n = rows.checked_mul(cols);
    let bytes = n
        .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
        .filter(|&b| b <= isize::MAX as usize);
    let (Some(n), Some(bytes)) = (n, bytes) else {
        return Err(too_big("more bytes than this machine can address".into()));
    };
    let need = (bytes as u64 / BENCH_MEMORY_FACTOR.1).saturating_mul(BENCH_MEMORY_FACTOR.0);
    if let Some(avail) = available_memory() {
        if need > avail {
            return Err(too_big(format!(
                "a {} table; the benchmark needs about {} of memory (the table, a working copy and the mask) but {} is available",
                report::bytes(bytes as u64),
                report::bytes(need),
                report::bytes(avail)
            )));
        }
    }
    let mut rng = Rng::new(seed);
    let t = with_dtype!(dtype, T => {
        let mut v: Vec<T> = Vec::new();
        v.try_reserve_exact(n).map_err(|_| {
            too_big(format!("a {} table, which cannot be allocated", report::bytes(bytes as u64)))
        })?;
        v.extend((0..n).map(|_| T::from_f64(rng.normal())));
        Tensor::from_vec(v, [rows, cols])
    });
    t.map_err(|e| CliError::lib("generating the table", e))
}

/// Splits `n` bytes into `parts` ranges of whole 64-byte lines.
fn byte_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let per = n.div_ceil(parts.max(1)).div_ceil(64) * 64;
    (0..parts)
        .map(|i| (i * per).min(n)..((i + 1) * per).min(n))
        .collect()
}

/// A plain parallel read of `bytes` on `threads` threads: the sum of its 8-byte words (a loop that
/// vectorizes; what reading the table once costs at best).
fn parallel_read(bytes: &[u8], threads: usize) -> u64 {
    std::thread::scope(|s| {
        let hs: Vec<_> = byte_ranges(bytes.len(), threads)
            .into_iter()
            .map(|r| {
                let part = &bytes[r];
                s.spawn(move || {
                    let words = part.chunks_exact(8);
                    let tail = words.remainder().iter().map(|&b| b as u64).sum::<u64>();
                    words
                        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
                        .fold(tail, u64::wrapping_add)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(0))
            .fold(0, u64::wrapping_add)
    })
}

/// A plain parallel copy of `src` into `dst` (same length) on `threads` threads.
fn parallel_copy(src: &[u8], dst: &mut [u8], threads: usize) {
    std::thread::scope(|s| {
        let mut rest = dst;
        for r in byte_ranges(src.len(), threads) {
            let (d, tail) = std::mem::take(&mut rest).split_at_mut(r.len());
            rest = tail;
            let part = &src[r];
            s.spawn(move || d.copy_from_slice(part));
        }
    })
}

/// Runs the benchmark.
pub fn bench(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.repeat == 0 {
        return Err(CliError::Usage("--repeat must be at least 1".into()));
    }
    let mut config = DataNormConfig::default();
    config.apply(&opts.flags);
    config
        .validate("bench")
        .map_err(|e| CliError::Usage(format!("bad bench config: {e}")))?;
    let g0 = Instant::now();
    let table = generate(opts.rows, opts.cols, opts.dtype, opts.seed)?;
    let generate_seconds = g0.elapsed().as_secs_f64();
    let bytes = table.size_in_bytes() as u64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Timings {
        steps,
        squashes,
        reads,
        copies,
        peak_extra,
        sparsity,
    } = time_repeats(&table, &config, opts.repeat, threads)?;
    // Per-repeat ratios: each repeat's limit is timed right next to its step and squash.
    let ratios = |xs: &[f64], limits: &[f64]| -> Vec<f64> {
        xs.iter()
            .zip(limits)
            .map(|(x, l)| if *x > 0.0 { l / x } else { 0.0 })
            .collect()
    };
    let step_vs_read = median(&ratios(&steps, &reads));
    let squash_vs_copy = median(&ratios(&squashes, &copies));
    let (read, copy) = (median(&reads), median(&copies));
    let (step, squash) = (median(&steps), median(&squashes));
    let installed = alloc::is_installed();
    Ok(BenchReport {
        rows: opts.rows,
        cols: opts.cols,
        dtype: opts.dtype.to_string(),
        config,
        repeat: opts.repeat,
        threads,
        bytes,
        step_seconds: step,
        squash_seconds: squash,
        step_gbps: report::gbps(bytes, step),
        squash_gbps: report::gbps(bytes, squash),
        read_seconds: read,
        copy_seconds: copy,
        read_gbps: report::gbps(bytes, read),
        copy_gbps: report::gbps(bytes, copy),
        step_vs_read,
        squash_vs_copy,
        step_seconds_all: steps,
        squash_seconds_all: squashes,
        peak_extra_bytes: installed.then_some(peak_extra),
        peak_extra_fraction: installed.then(|| {
            if bytes == 0 {
                0.0
            } else {
                peak_extra as f64 / bytes as f64
            }
        }),
        sparsity,
        generate_seconds,
    })
}

/// Each repeat's times: the step, the squash, and right next to them a plain parallel read and
/// copy of the same bytes (the limits the ratios are taken against).
struct Timings {
    steps: Vec<f64>,
    squashes: Vec<f64>,
    reads: Vec<f64>,
    copies: Vec<f64>,
    peak_extra: u64,
    sparsity: f64,
}

fn time_repeats(
    table: &Tensor,
    config: &DataNormConfig,
    repeat: usize,
    threads: usize,
) -> Result<Timings> {
    let lib = |e| CliError::lib("benchmark", e);
    let mut t = Timings {
        steps: Vec::new(),
        squashes: Vec::new(),
        reads: Vec::new(),
        copies: Vec::new(),
        peak_extra: 0,
        sparsity: 0.0,
    };
    // One rule for every repeat, as in training: it keeps its scratch space from step to step.
    let mut sp = DataSparsifier::new(DataNorm::new(), config.clone()).map_err(lib)?;
    let mut copy_dst = Vec::new();
    for _ in 0..repeat {
        let param = Parameter::new(table.clone());
        let src = table.as_bytes();
        let r0 = Instant::now();
        std::hint::black_box(parallel_read(src, threads));
        t.reads.push(r0.elapsed().as_secs_f64());
        if copy_dst.len() != src.len() {
            copy_dst = vec![0u8; src.len()];
            parallel_copy(src, &mut copy_dst, threads); // fault the pages in, untimed
        }
        let c0 = Instant::now();
        parallel_copy(src, &mut copy_dst, threads);
        t.copies.push(c0.elapsed().as_secs_f64());
        std::hint::black_box(&copy_dst);
        let base = alloc::reset_peak();
        sp.add_data("table", &param).map_err(lib)?;
        let t0 = Instant::now();
        sp.step().map_err(lib)?;
        let t1 = Instant::now();
        sp.squash_mask(None, SquashOptions::default())
            .map_err(lib)?;
        let t2 = Instant::now();
        t.peak_extra = t.peak_extra.max(alloc::peak().saturating_sub(base) as u64);
        t.sparsity = sp.get_mask("table").map_err(lib)?.sparsity();
        sp.remove_data("table").map_err(lib)?;
        t.steps.push((t1 - t0).as_secs_f64());
        t.squashes.push((t2 - t1).as_secs_f64());
    }
    Ok(t)
}

impl BenchReport {
    /// The human-readable summary.
    pub fn render(&self) -> String {
        let spread = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            format!("min {}, max {}", report::seconds(min), report::seconds(max))
        };
        let mut out = format!(
            "bench: {} x {} {} table ({}), {}, {} repeats, {} threads; {} zeroed\n",
            self.rows,
            self.cols,
            self.dtype,
            report::bytes(self.bytes),
            self.config.describe(),
            self.repeat,
            self.threads,
            report::percent(self.sparsity),
        );
        out.push_str(&format!(
            "read    median {:>9}  {:6.2} GB/s  (plain parallel read of the table: the limit of step)\n",
            report::seconds(self.read_seconds),
            self.read_gbps,
        ));
        out.push_str(&format!(
            "copy    median {:>9}  {:6.2} GB/s  (plain parallel copy of the table: the limit of squash)\n",
            report::seconds(self.copy_seconds),
            self.copy_gbps,
        ));
        out.push_str(&format!(
            "step    median {:>9}  {:6.2} GB/s  {:5.2} of the read  ({})\n",
            report::seconds(self.step_seconds),
            self.step_gbps,
            self.step_vs_read,
            spread(&self.step_seconds_all)
        ));
        out.push_str(&format!(
            "squash  median {:>9}  {:6.2} GB/s  {:5.2} of the copy  ({})\n",
            report::seconds(self.squash_seconds),
            self.squash_gbps,
            self.squash_vs_copy,
            spread(&self.squash_seconds_all)
        ));
        match (self.peak_extra_bytes, self.peak_extra_fraction) {
            (Some(b), Some(f)) => out.push_str(&format!(
                "peak extra memory (add_data + step + squash, mask included): {} ({} of the table)\n",
                report::bytes(b),
                report::percent(f)
            )),
            _ => out.push_str("peak extra memory: not measured (counting allocator not installed)\n"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bench_runs() {
        let r = bench(&BenchOptions {
            rows: 16,
            cols: 8,
            repeat: 3,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.bytes, 16 * 8 * 4);
        assert_eq!(r.step_seconds_all.len(), 3);
        assert!((r.sparsity - 0.5).abs() < 1e-9);
        assert!(r.render().contains("GB/s"));
        assert!(r.render().contains("of the read") && r.render().contains("of the copy"));
        assert!(r.read_seconds > 0.0 && r.copy_seconds > 0.0);
        assert!(r.step_vs_read > 0.0 && r.squash_vs_copy > 0.0);
        // The baselines really read and copy every byte.
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let want = bytes.chunks(8).fold(0u64, |a, c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            if c.len() == 8 {
                a.wrapping_add(u64::from_le_bytes(w))
            } else {
                a.wrapping_add(c.iter().map(|&b| b as u64).sum())
            }
        });
        for threads in [1, 3, 7] {
            assert_eq!(parallel_read(&bytes, threads), want);
            let mut dst = vec![0u8; bytes.len()];
            parallel_copy(&bytes, &mut dst, threads);
            assert_eq!(dst, bytes);
        }
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn huge_tables_are_errors_not_aborts() {
        for (rows, cols, dtype) in [
            (100_000_000_000, 64, DType::F32),
            (2_305_843_009_213_693_952, 4, DType::F32),
            (usize::MAX, 2, DType::F16),
            (1 << 62, 1, DType::F64),
        ] {
            let e = generate(rows, cols, dtype, 0).unwrap_err().to_string();
            assert!(
                e.contains(&format!("--rows {rows} x --cols {cols}")) && e.contains("smaller"),
                "{e}"
            );
        }
        assert_eq!(generate(3, 5, DType::BF16, 0).unwrap().shape(), &[3, 5]);
    }
}
