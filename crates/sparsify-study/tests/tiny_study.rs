//! CI's tiny-scale study: every CSV row and column, a model that learned, sparsity that costs
//! quality, and the figures.

use sparsify_study::report::{FORWARD_COLUMNS, METADATA_COLUMNS, METRICS_COLUMNS};
use sparsify_study::sweep::{seed_levels, Format, GridConfig};
use sparsify_study::{metrics, run, Scale, StudyOptions};

fn read_csv(path: &std::path::Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    (
        header,
        lines
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect(),
    )
}

#[test]
fn tiny_study_writes_every_row_column_and_figure() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StudyOptions {
        scale: Scale::Tiny,
        out: dir.path().to_path_buf(),
        movielens: false,
        seed: 5,
        progress: false,
    };
    let out = run(&opts).unwrap();
    let models = seed_levels().len() * GridConfig::seed_grid().len();
    assert_eq!(seed_levels().len(), 20);

    for (file, columns, rows) in [
        ("sparse_model_metadata.csv", METADATA_COLUMNS, models),
        (
            "sparse_model_metrics.csv",
            METRICS_COLUMNS,
            models * Format::ALL.len(),
        ),
        (
            "dlrm_forward_time_info.csv",
            FORWARD_COLUMNS,
            models * Format::ALL.len(),
        ),
    ] {
        let (header, body) = read_csv(&dir.path().join(file));
        assert_eq!(header, columns, "{file}");
        assert_eq!(body.len(), rows, "{file}");
        assert!(
            body.iter()
                .all(|r| r.len() == columns.len() && r.iter().all(|c| !c.is_empty())),
            "{file}"
        );
    }
    // The seed's leading columns.
    assert_eq!(
        &METADATA_COLUMNS[..5],
        &[
            "norm",
            "sparse_block_shape",
            "sparsity_level",
            "step_time_sec",
            "zip_file_size"
        ]
    );

    let facts = &out.facts[0];
    let q = |level: f64, f: Format| {
        out.results
            .metrics
            .iter()
            .find(|m| m.config == GridConfig::seed_grid()[1] && m.format == f && m.level == level)
            .unwrap()
            .quality
    };
    let q0 = q(0.0, Format::Dense);
    let majority = facts.base_rate.max(1.0 - facts.base_rate);
    assert!(q0.roc_auc > 0.6, "AUC at level 0: {}", q0.roc_auc);
    assert!(
        q0.accuracy > majority,
        "accuracy {} vs the base rate's {majority}",
        q0.accuracy
    );
    assert!(q(1.0, Format::Dense).roc_auc < q0.roc_auc);
    // compact f32 is the squashed table exactly: the same predictions, so the same metrics.
    for level in seed_levels() {
        assert_eq!(
            q(level, Format::Dense),
            q(
                level,
                Format::Compact(data_sparsifier::compact::Encoding::F32)
            )
        );
    }
    // Sizes fall with sparsity; compact beats dense at 0.8.
    let meta: Vec<_> = out
        .results
        .metadata
        .iter()
        .filter(|m| m.config == GridConfig::seed_grid()[1])
        .collect();
    let at = |l: f64| meta.iter().find(|m| m.level == l).unwrap();
    assert!(at(0.8).dense_zip_bytes < at(0.0).dense_zip_bytes);
    assert!(at(0.8).compact_int8_bytes < at(0.8).compact_f32_bytes);
    assert!(at(0.8).compact_f32_bytes < at(0.8).dense_bytes);
    assert!(
        (at(0.8).zero_fraction - 0.8).abs() < 0.05,
        "{}",
        at(0.8).zero_fraction
    );

    assert_eq!(out.plots.len(), 4);
    for p in &out.plots {
        let bytes = std::fs::read(dir.path().join(p)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{p}");
    }
    assert!(dir.path().join("summary.md").exists());
    // Nothing but the outputs is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3 + 4 + 1, "{left:?}");
    assert!(metrics::base_rate(&[1.0, 0.0]) == 0.5);
}
