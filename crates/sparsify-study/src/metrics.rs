//! Model quality on a held-out set: the seed's sklearn metrics, computed here.

/// The seed's quality metrics (`evaluate_model_metrics.py`), for a binary click label.
///
/// Predictions are rounded at 0.5 for precision, recall, f1 and accuracy (the positive class
/// is a click), as sklearn does with the seed's `np.round`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// TP / (TP + FP); 0 when nothing is predicted positive (sklearn's `zero_division` warning value).
    pub precision: f64,
    /// TP / (TP + FN).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Area under the ROC curve, ties counted as half (sklearn's `roc_auc_score`).
    pub roc_auc: f64,
    /// Fraction of rounded predictions equal to the label.
    pub accuracy: f64,
    /// Mean binary cross-entropy, probabilities clipped to `[1e-15, 1 - 1e-15]`.
    pub log_loss: f64,
}

/// The metrics of click probabilities `p` against labels `y` (0 or 1).
///
/// ```
/// use sparsify_study::metrics::quality;
/// let q = quality(&[0.9, 0.8, 0.3, 0.1], &[1.0, 0.0, 1.0, 0.0]);
/// assert_eq!((q.accuracy, q.precision, q.recall), (0.5, 0.5, 0.5));
/// assert_eq!(q.roc_auc, 0.75);
/// ```
pub fn quality(p: &[f32], y: &[f32]) -> Quality {
    assert_eq!(p.len(), y.len(), "one probability per label");
    let (mut tp, mut fp, mut fn_, mut hits) = (0u64, 0u64, 0u64, 0u64);
    let mut ll = 0.0f64;
    for (&pi, &yi) in p.iter().zip(y) {
        let pred = pi > 0.5;
        let pos = yi > 0.5;
        match (pred, pos) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
        hits += (pred == pos) as u64;
        let q = (pi as f64).clamp(1e-15, 1.0 - 1e-15);
        ll -= if pos { q.ln() } else { (1.0 - q).ln() };
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Quality {
        precision,
        recall,
        f1,
        roc_auc: roc_auc(p, y),
        accuracy: ratio(hits, p.len() as u64),
        log_loss: if p.is_empty() {
            0.0
        } else {
            ll / p.len() as f64
        },
    }
}

/// ROC AUC by the rank-sum (Mann–Whitney) formula with average ranks for ties; 0.5 when one
/// class is absent.
pub fn roc_auc(p: &[f32], y: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_unstable_by(|&a, &b| p[a].total_cmp(&p[b]));
    let (mut rank_sum, mut npos) = (0.0f64, 0u64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && p[order[j + 1]] == p[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0; // ranks are 1-based
        for &k in &order[i..=j] {
            if y[k] > 0.5 {
                rank_sum += avg;
                npos += 1;
            }
        }
        i = j + 1;
    }
    let nneg = p.len() as u64 - npos;
    if npos == 0 || nneg == 0 {
        return 0.5;
    }
    (rank_sum - (npos * (npos + 1)) as f64 / 2.0) / (npos as f64 * nneg as f64)
}

/// The fraction of positive labels.
pub fn base_rate(y: &[f32]) -> f64 {
    y.iter().filter(|&&v| v > 0.5).count() as f64 / y.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(roc_auc(&[0.5, 0.5], &[1.0, 0.0]), 0.5);
        assert_eq!(roc_auc(&[0.1, 0.9], &[0.0, 1.0]), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.1], &[0.0, 1.0]), 0.0);
        // sklearn: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
    }

    #[test]
    fn log_loss_matches_sklearn() {
        // sklearn: log_loss([1, 0], [0.8, 0.3]) == 0.2899092476264711
        let q = quality(&[0.8, 0.3], &[1.0, 0.0]);
        assert!((q.log_loss - 0.289_909_247_626_471_1).abs() < 1e-6);
        assert_eq!(q.f1, 1.0);
    }
}
