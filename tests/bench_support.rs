//! The statistics the benches decide by (benches/support/mod.rs), checked against values
//! worked out by hand from the binomial distribution.

#[path = "../benches/support/mod.rs"]
mod support;

use support::median_interval;

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
