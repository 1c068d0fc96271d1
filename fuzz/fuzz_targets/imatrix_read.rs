//! Any bytes as an imatrix file (`compress --quantize int8 --imatrix`): GGUF or legacy `.dat`,
//! chosen by the magic as `ActStats::load` does. Returns statistics or an error, never panics
//! or over-allocates; accepted statistics are finite and non-negative.
#![no_main]

use dcgguf::quant::ActStats;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(stats) = ActStats::from_bytes(data) else {
        return;
    };
    for (name, st) in &stats.tensors {
        assert!(
            st.mean_sq.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{name}: bad mean x^2 accepted"
        );
        if let Some(max) = &st.max_abs {
            assert_eq!(max.len(), st.mean_sq.len(), "{name}: in_max length");
            assert!(max.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
        let _ = st.magnitude();
    }
});
