//! Times the DataNorm step alone (`compute_mask_with`, scratch reused) beside a plain parallel
//! read of the same table, in the same process, and prints the median of each and their ratio
//! (1.0 = the step runs at the speed of reading the table).
//!
//! For A/B runs of the kernel itself, without the CLI's table setup, squash and copy: build this
//! example in an old worktree (copy the file there) and here, and alternate the two binaries, as
//! in docs/data-norm.md ("Prefetching"):
//!
//! ```text
//! cargo run --release -p data-sparsifier --example step_vs_read -- ROWS COLS BH BW [ZPB|whole] [f32|f16|bf16|f64] [REPEATS]
//! cargo run --release -p data-sparsifier --example step_vs_read -- 1000000 64 4 4 whole f32 9
//! ```

use std::time::Instant;

use data_sparsifier::limits::parallel_read;
use data_sparsifier::norm::{compute_mask_with, DataNormConfig, Scratch};
use data_sparsifier::{random::randn, DType, Mask};

const USAGE: &str = "usage: step_vs_read ROWS COLS BH BW [ZPB|whole] [f32|f16|bf16|f64] [REPEATS]";

fn arg(args: &[String], i: usize, default: usize) -> Result<usize, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("argument {i} is {s:?}, not a whole number; {USAGE}")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (rows, cols) = (arg(&args, 1, 1_000_000)?, arg(&args, 2, 64)?);
    let (bh, bw) = (arg(&args, 3, 1)?, arg(&args, 4, 4)?);
    let zpb = match args.get(5).map(String::as_str) {
        None | Some("whole") => None,
        Some(_) => Some(arg(&args, 5, 0)?),
    };
    let dtype = match args.get(6).map(String::as_str) {
        None | Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some("f64") => DType::F64,
        Some(d) => return Err(format!("dtype {d:?} is not f32, f16, bf16 or f64; {USAGE}")),
    };
    let repeats = arg(&args, 7, 9)?.max(1);
    let config = DataNormConfig {
        sparse_block_shape: (bh, bw),
        zeros_per_block: zpb,
        ..DataNormConfig::default()
    };
    let table = randn([rows, cols], dtype, 0);
    let mut mask = Mask::ones([rows, cols]);
    let mut scratch = Scratch::new();
    let bytes = table.as_bytes();
    let (mut reads, mut steps) = (Vec::new(), Vec::new());
    // One untimed step: the scratch and the mask's pages are touched once, as in a sparsifier.
    compute_mask_with("t", table.view(), &config, &mut mask, &mut scratch)
        .map_err(|e| e.to_string())?;
    for _ in 0..repeats {
        let t = Instant::now();
        let x = parallel_read(bytes);
        std::hint::black_box(x);
        reads.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        compute_mask_with("t", table.view(), &config, &mut mask, &mut scratch)
            .map_err(|e| e.to_string())?;
        steps.push(t.elapsed().as_secs_f64());
    }
    let (r, s) = (median(reads), median(steps));
    println!(
        "{rows} x {cols} {dtype:?} ({bh},{bw}) zpb {zpb:?}: read {:.2} ms, step {:.2} ms, step / read {:.3}",
        r * 1e3,
        s * 1e3,
        r / s
    );
    Ok(())
}
