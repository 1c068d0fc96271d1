//! The statistics the benches decide by (benches/support/mod.rs), checked against values
//! worked out by hand from the binomial distribution.

#[path = "../benches/support/mod.rs"]
mod support;

use support::{median, median_interval};

#[test]
fn no_median_interval_from_fewer_than_five_values() {
    // Four values: the widest interval covers the median with probability 1 - 2/16 = 87.5%.
    assert_eq!(median_interval(&[]), None);
    assert_eq!(median_interval(&[1.0, 2.0, 3.0, 4.0]), None);
}

#[test]
fn median_interval_is_the_sign_tests_order_statistics() {
    // Five values: P(B <= 0) = 1/32 <= 5%, P(B <= 1) = 6/32 > 5%: smallest to largest
    // (coverage 93.75%), whatever order the values come in.
    assert_eq!(
        median_interval(&[5.0, 1.0, 4.0, 2.0, 3.0]),
        Some((1.0, 5.0))
    );
    // Eight values: P(B <= 1) = 9/256 <= 5%, P(B <= 2) = 37/256 > 5%: the second smallest
    // to the second largest.
    let eight: Vec<f64> = (1..=8).rev().map(f64::from).collect();
    assert_eq!(median_interval(&eight), Some((2.0, 7.0)));
    // Twenty values: P(B <= 5) = 21700/2^20 = 2.07%, P(B <= 6) = 60460/2^20 = 5.77%: the
    // sixth to the fifteenth.
    let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(median_interval(&twenty), Some((6.0, 15.0)));
}

#[test]
fn seven_values_need_their_extremes() {
    // Seven values: P(B <= 1) = 8/128 = 6.25% > 5%, so only the smallest to the largest
    // covers 90% (99.2%).
    let v = [0.91, 1.07, 0.64, 1.22, 0.98, 1.01, 0.87];
    assert_eq!(median_interval(&v), Some((0.64, 1.22)));
}

#[test]
fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
    assert_eq!(median(vec![]), None);
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
}

use support::{Knee, Side, Verdict, knee, knee_gap, side};

const MIB: u64 = 1 << 20;

#[test]
fn side_settles_only_where_the_interval_clears_the_threshold() {
    let v = [0.95, 0.96, 0.97, 0.98, 0.99];
    assert_eq!(side(&v, 0.9), Side::Above);
    assert_eq!(side(&v, 1.0), Side::Below);
    assert_eq!(side(&v, 0.97), Side::Open);
    // Below five values the smallest and largest stand in.
    assert_eq!(side(&[0.85, 0.95], 0.9), Side::Open);
    assert_eq!(side(&[0.91, 0.95], 0.9), Side::Above);
}

fn kept() -> Option<Vec<f64>> {
    Some(vec![0.95, 0.97, 0.98, 0.99, 1.0])
}
fn lost() -> Option<Vec<f64>> {
    Some(vec![0.5, 0.6, 0.7, 0.8, 0.85])
}
fn open() -> Option<Vec<f64>> {
    Some(vec![0.8, 0.85, 0.9, 0.95, 1.0])
}

#[test]
fn knee_is_a_range_where_a_cap_is_open() {
    let settled = knee(&[(100 * MIB, kept()), (90 * MIB, kept()), (80 * MIB, lost())]);
    assert_eq!(
        settled,
        Knee {
            lowest: Some(90 * MIB),
            highest: Some(90 * MIB),
            below_ladder: false
        }
    );
    // An open cap before the first lost one: the knee lies between it and the last kept.
    let open_below = knee(&[
        (100 * MIB, kept()),
        (90 * MIB, open()),
        (80 * MIB, kept()),
        (70 * MIB, None),
    ]);
    assert_eq!(
        open_below,
        Knee {
            lowest: Some(80 * MIB),
            highest: Some(100 * MIB),
            below_ladder: false
        }
    );
    // Kept to the bottom: the knee may lie lower still.
    assert!(knee(&[(100 * MIB, kept()), (90 * MIB, kept())]).below_ladder);
    // Lost at the top: above the ladder.
    assert_eq!(knee(&[(100 * MIB, lost())]).lowest, None);
}

#[test]
fn knee_gap_passes_or_fails_only_where_both_ranges_agree() {
    let at = |lowest: u64, highest: u64| Knee {
        lowest: Some(lowest * MIB),
        highest: Some(highest * MIB),
        below_ladder: false,
    };
    let need = 10.0 * MIB as f64;
    let top = 150 * MIB;
    assert_eq!(
        knee_gap(at(120, 120), at(140, 140), top, need).0,
        Verdict::Pass
    );
    assert_eq!(
        knee_gap(at(135, 135), at(140, 140), top, need).0,
        Verdict::Fail
    );
    // DC's knee 120-135, plain's 140: the gap is 5-20 MiB.
    let (v, (lo, hi)) = knee_gap(at(120, 135), at(140, 140), top, need);
    assert_eq!(v, Verdict::Unresolved);
    assert_eq!((lo, hi), (5.0 * MIB as f64, 20.0 * MIB as f64));
    // Plain mmap's knee may lie above the ladder: the gap has no upper bound, no FAIL.
    let plain_above = Knee {
        lowest: None,
        highest: None,
        below_ladder: false,
    };
    let (v, (_, hi)) = knee_gap(at(145, 145), plain_above, top, need);
    assert_eq!((v, hi), (Verdict::Unresolved, f64::INFINITY));
    // DC's knee below the ladder's bottom (kept at every cap): the gap may be larger than
    // the bottom cap says, no FAIL (the memcap run of 2026-12-02 said FAIL: 7.1 MiB to the
    // bottom cap, where DC still kept its speed).
    let below = Knee {
        lowest: Some(128 * MIB),
        highest: Some(128 * MIB),
        below_ladder: true,
    };
    let (v, (lo, _)) = knee_gap(below, at(135, 135), top, need);
    assert_eq!((v, lo), (Verdict::Unresolved, 7.0 * MIB as f64));
    // DC's knee above the ladder where plain mmap keeps its speed at the top cap: FAIL.
    let dc_above = plain_above;
    assert_eq!(knee_gap(dc_above, at(140, 150), top, need).0, Verdict::Fail);
}

use support::lowest_cap_bound;

#[test]
fn lowest_cap_bound_needs_the_run_without_a_budget() {
    let (decoded, compressed) = (92 * MIB, 82 * MIB);
    // That run's uncapped peak less the decoded weights is the non-weight memory.
    let (bound, non_weight) = lowest_cap_bound(Some(142 * MIB), decoded, compressed).unwrap();
    assert_eq!(non_weight, 50 * MIB);
    assert!((bound - 1.1 * (132 * MIB) as f64).abs() < 1.0, "{bound}");
    // A peak below the weights counts no non-weight memory.
    assert_eq!(
        lowest_cap_bound(Some(10 * MIB), decoded, compressed).map(|b| b.1),
        Some(0)
    );
    // Without it there is no bound (the bench says UNRESOLVED, not FAIL).
    assert_eq!(lowest_cap_bound(None, decoded, compressed), None);
}

#[test]
fn knee_values_pair_each_run_with_the_uncapped_run_of_its_round() {
    use support::of_uncapped;
    // Every round has its uncapped partner: round by round, the base median unused.
    assert_eq!(
        of_uncapped(
            &[Some(90.0), Some(45.0)],
            &[Some(100.0), Some(50.0)],
            Some(1.0)
        ),
        Some(vec![0.9, 0.9])
    );
    // A drift that moves both sides alike leaves the ratios where they were; over the
    // median of an earlier uncapped cell the same runs would read 0.9 and 0.45.
    assert_eq!(
        of_uncapped(&[Some(90.0), Some(45.0)], &[], Some(100.0)),
        Some(vec![0.9, 0.45])
    );
    // A partner without a speed (or a missing one): the whole point falls back to the base.
    assert_eq!(
        of_uncapped(&[Some(90.0), Some(45.0)], &[Some(100.0), None], Some(90.0)),
        Some(vec![1.0, 0.5])
    );
    assert_eq!(
        of_uncapped(&[Some(90.0), Some(45.0)], &[Some(100.0)], Some(90.0)),
        Some(vec![1.0, 0.5])
    );
    // A capped run that failed loses the point's speed, paired or not.
    assert_eq!(
        of_uncapped(&[Some(90.0), None], &[Some(100.0), Some(100.0)], None),
        None
    );
    assert_eq!(of_uncapped(&[Some(90.0), None], &[], Some(100.0)), None);
    // Neither partners nor a base: nothing to compare with.
    assert_eq!(of_uncapped(&[Some(90.0)], &[], None), None);
}
