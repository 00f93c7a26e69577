//! LoadStats window / reset / entropy behaviour and the table.

use hearth_moe::{EntropyUnit, LoadStats, MoeError, RouterSpec, format_table};

#[test]
fn sliding_window_keeps_only_the_last_calls() {
    let mut s = LoadStats::windowed(3, 2).unwrap();
    s.record_counts(&[5, 0, 0]).unwrap();
    assert_eq!((s.counts(), s.calls()), (&[5, 0, 0][..], 1));
    s.record_counts(&[0, 2, 0]).unwrap();
    assert_eq!((s.counts(), s.calls()), (&[5, 2, 0][..], 2));
    s.record_counts(&[0, 0, 7]).unwrap();
    assert_eq!((s.counts(), s.calls()), (&[0, 2, 7][..], 2));
    s.record_counts(&[1, 1, 1]).unwrap();
    assert_eq!(s.counts(), &[1, 1, 8]);
    assert_eq!(s.total(), 10);
}

#[test]
fn cumulative_stats_keep_everything_until_reset() {
    let mut s = LoadStats::new(2);
    for _ in 0..1000 {
        s.record_counts(&[1, 3]).unwrap();
    }
    assert_eq!((s.counts(), s.calls(), s.total()), (&[1000, 3000][..], 1000, 4000));
    assert_eq!(s.share(), vec![0.25, 0.75]);
    s.reset();
    assert_eq!((s.counts(), s.calls(), s.total()), (&[0, 0][..], 0, 0));
    assert_eq!(s.max_mean_ratio(), None);
    assert_eq!(s.entropy(EntropyUnit::Nats), None);
    assert_eq!(s.hottest(), None);
    assert_eq!(s.share(), vec![0.0, 0.0]);
    s.record_counts(&[2, 2]).unwrap();
    assert_eq!(s.max_mean_ratio(), Some(1.0));

    let mut w = LoadStats::windowed(2, 3).unwrap();
    w.record_counts(&[1, 0]).unwrap();
    w.reset();
    w.record_counts(&[0, 1]).unwrap();
    assert_eq!((w.counts(), w.calls()), (&[0, 1][..], 1));
}

#[test]
fn entropy_in_nats_and_bits() {
    let mut s = LoadStats::new(8);
    s.record_counts(&[3; 8]).unwrap();
    let nats = s.entropy(EntropyUnit::Nats).unwrap();
    let bits = s.entropy(EntropyUnit::Bits).unwrap();
    assert!((nats - 8f64.ln()).abs() < 1e-12);
    assert!((bits - 3.0).abs() < 1e-12);
    assert!((s.normalized_entropy().unwrap() - 1.0).abs() < 1e-12);

    s.reset();
    s.record_counts(&[9, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(s.entropy(EntropyUnit::Bits), Some(0.0));
    assert_eq!(s.normalized_entropy(), Some(0.0));
    assert_eq!(s.max_mean_ratio(), Some(8.0));

    // p = (1/2, 1/4, 1/4): H = 1.5 bits
    let mut s = LoadStats::new(3);
    s.record_counts(&[2, 1, 1]).unwrap();
    assert!((s.entropy(EntropyUnit::Bits).unwrap() - 1.5).abs() < 1e-12);
    assert!((s.entropy(EntropyUnit::Nats).unwrap() - 1.5 * std::f64::consts::LN_2).abs() < 1e-12);
    assert!((s.max_mean_ratio().unwrap() - 1.5).abs() < 1e-12);
}

#[test]
fn records_routings_and_checks_expert_count() {
    let spec = RouterSpec::mixtral(4, 2).unwrap();
    let logits = [3.0, 2.0, 0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 1.0, 0.0, 0.0, 2.0];
    let r = spec.route(&logits, 3, None).unwrap();
    let mut s = LoadStats::windowed(4, 8).unwrap();
    s.record(&r).unwrap();
    assert_eq!(s.counts(), &[2, 2, 1, 1]);
    assert_eq!(s.total(), 6);
    assert_eq!(s.active_experts(), 4);
    assert_eq!(s.hottest(), Some((0, 2)));
    let mut other = LoadStats::new(5);
    assert_eq!(
        other.record(&r),
        Err(MoeError::ExpertCountMismatch { expected: 5, actual: 4 })
    );
    assert_eq!(
        other.record_counts(&[1]),
        Err(MoeError::ExpertCountMismatch { expected: 5, actual: 1 })
    );
    assert_eq!(LoadStats::windowed(4, 0), Err(MoeError::ZeroWindow));
}

#[test]
fn table_has_one_row_per_layer_with_summaries() {
    let mut a = LoadStats::new(4);
    a.record_counts(&[6, 2, 0, 0]).unwrap();
    let b = LoadStats::new(4);
    let mut c = LoadStats::windowed(4, 2).unwrap();
    c.record_counts(&[1, 1, 1, 1]).unwrap();
    let table = format_table(&[a, b, c]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for col in [
        "layer", "experts", "calls", "assign", "active", "max/mean", "H(bits)", "H/Hmax", "hottest",
    ] {
        assert!(lines[0].contains(col), "{table}");
    }
    let row0: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row0[..8],
        &["0", "4", "1", "8", "2/4", "3.000", "0.811", "0.406"],
        "{table}"
    );
    assert_eq!(&row0[8..], &["0", "(75.0%)"]);
    let row1: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row1, vec!["1", "4", "0", "0", "0/4", "-", "-", "-", "-"]);
    assert!(lines[3].contains("1.000") && lines[3].contains("2.000"), "{table}");
    // columns are aligned: every line has the same width up to trailing spaces
    let width = lines[0].len();
    assert!(lines.iter().all(|l| l.len() <= width + 8));
    assert_eq!(format_table(&[]).lines().count(), 1);
}
