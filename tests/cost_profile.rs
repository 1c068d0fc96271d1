//! The machine profile behind the cost model: measured, saved, and re-measured when it is
//! missing, corrupt, from another machine or from another version.

mod common;

use common::{GgufBuilder, Rng, TempDir, Tensor};
use dcgguf::dc::{CompressOptions, DcFile, compress_file};

use dcgguf::cost::probe::{PROFILE_VERSION, save_profile};
use dcgguf::cost::{LoadModel, ProbeOptions, Stale, load_model_for, load_or_probe, load_profile};
use dcgguf::gguf::GgmlType;

fn tmp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("profile-{tag}"))
}

fn small(dir: &std::path::Path) -> ProbeOptions {
    ProbeOptions {
        storage_dir: dir.to_path_buf(),
        file_bytes: 8 << 20,
        sample_bytes: 1 << 20,
    }
}

#[test]
fn missing_corrupt_foreign_and_old_profiles_are_remeasured() {
    let dir = tmp_dir("stale");
    let path = dir.join("profile.json");
    let opts = small(dir.path());

    let (p, why) = load_or_probe(&path, &opts).unwrap();
    assert_eq!(why, Some(Stale::Missing));
    assert!(p.read_warm_bps > 0.0 && p.memcpy_bps > 0.0);
    assert!(p.decode.iter().all(|d| d.bps_1_thread > 0.0));
    let (_, why) = load_or_probe(&path, &opts).unwrap();
    assert_eq!(why, None, "a fresh profile is reused");

    std::fs::write(&path, b"{ not json").unwrap();
    assert!(matches!(load_profile(&path), Err(Stale::Corrupt(_))));
    let (_, why) = load_or_probe(&path, &opts).unwrap();
    assert!(matches!(why, Some(Stale::Corrupt(_))));
    assert!(load_profile(&path).is_ok(), "re-measured profile was saved");

    let mut foreign = load_profile(&path).unwrap();
    foreign.fingerprint.cpu_model = "Some Other CPU 9000".into();
    save_profile(&foreign, &path).unwrap();
    assert_eq!(load_profile(&path).unwrap_err(), Stale::OtherMachine);
    let (_, why) = load_or_probe(&path, &opts).unwrap();
    assert_eq!(why, Some(Stale::OtherMachine));

    let mut old = load_profile(&path).unwrap();
    old.version = PROFILE_VERSION + 1;
    save_profile(&old, &path).unwrap();
    assert_eq!(load_profile(&path).unwrap_err(), Stale::OldVersion);

    let mut insane = load_profile(&path)
        .ok()
        .unwrap_or_else(|| load_or_probe(&path, &opts).unwrap().0);
    insane.version = PROFILE_VERSION;
    insane.memcpy_bps = f64::NAN;
    save_profile(&insane, &path).unwrap();
    assert!(matches!(load_profile(&path), Err(Stale::Corrupt(_))));
}

#[test]
fn the_model_stores_raw_what_decodes_slower_than_storage_reads() {
    let dir = tmp_dir("model");
    let (p, _) = load_or_probe(&dir.join("profile.json"), &small(dir.path())).unwrap();
    let slowest = p
        .decode
        .iter()
        .map(|d| d.bps_all_threads)
        .fold(f64::INFINITY, f64::min);
    let fastest = p
        .decode
        .iter()
        .map(|d| d.bps_all_threads)
        .fold(0.0, f64::max);
    let slow_storage = LoadModel::new(p.clone(), Some(slowest / 2.0));
    let fast_storage = LoadModel::new(p, Some(fastest * 2.0));
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_1] {
        assert!(slow_storage.compress_pays(ty), "{ty} on slow storage");
        assert!(!fast_storage.compress_pays(ty), "{ty} on fast storage");
    }
}

#[test]
fn convert_time_choice_follows_the_storage_bandwidth() {
    let dir = tmp_dir("convert");
    let (p, _) = load_or_probe(&dir.join("profile.json"), &small(dir.path())).unwrap();
    let mut rng = Rng::new(7);
    let gguf = GgufBuilder::new()
        .tensor(Tensor::random("a", &[4096, 64], GgmlType::BF16, &mut rng))
        .tensor(Tensor::random("b", &[4096, 64], GgmlType::Q8_0, &mut rng))
        .build();
    let input = dir.join("in.gguf");
    std::fs::write(&input, &gguf).unwrap();
    let compress = |bps: f64, name: &str| {
        let out = dir.join(name);
        let opts = CompressOptions {
            load_model: Some(std::sync::Arc::new(LoadModel::new(p.clone(), Some(bps)))),
            ..CompressOptions::default()
        };
        compress_file(&input, &out, &opts, &|_| {}).unwrap();
        let dc = DcFile::open(&out).unwrap();
        let raw_chunks: usize = (0..dc.tensor_count())
            .map(|i| dc.tensor_view(i).raw_chunks)
            .sum();
        let chunks: usize = (0..dc.tensor_count())
            .map(|i| dc.tensor_view(i).chunks)
            .sum();
        (raw_chunks, chunks, dc.stored_size())
    };
    let (raw_fast, chunks, size_fast) = compress(1e15, "fast.dc.gguf");
    assert_eq!(
        raw_fast, chunks,
        "infinitely fast storage: nothing is worth decoding"
    );
    let (raw_slow, _, size_slow) = compress(1e3, "slow.dc.gguf");
    assert!(raw_slow < chunks, "very slow storage: compress what pays");
    assert!(size_slow < size_fast);
}

#[test]
fn target_size_compresses_just_enough() {
    let dir = tmp_dir("target");
    let (p, _) = load_or_probe(&dir.join("profile.json"), &small(dir.path())).unwrap();
    let mut rng = Rng::new(11);
    let gguf = GgufBuilder::new()
        .tensor(Tensor::random("a", &[4096, 64], GgmlType::BF16, &mut rng))
        .tensor(Tensor::random("b", &[4096, 64], GgmlType::F16, &mut rng))
        .tensor(Tensor::random("c", &[4096, 64], GgmlType::Q8_0, &mut rng))
        .build();
    let input = dir.join("in.gguf");
    std::fs::write(&input, &gguf).unwrap();
    let run = |target: Option<u64>, name: &str| {
        let out = dir.join(name);
        let opts = CompressOptions {
            // Storage so fast that the model alone would store everything raw.
            load_model: Some(std::sync::Arc::new(LoadModel::new(p.clone(), Some(1e15)))),
            target_size: target,
            force: true,
            ..CompressOptions::default()
        };
        compress_file(&input, &out, &opts, &|_| {}).map(|r| r.output_bytes)
    };
    let all_raw = run(None, "raw.dc.gguf").unwrap();
    let smallest = compress_file(
        &input,
        &dir.join("min.dc.gguf"),
        &CompressOptions::default(),
        &|_| {},
    )
    .unwrap()
    .output_bytes;
    assert!(smallest < all_raw);
    let target = (smallest + all_raw) / 2;
    let fitted = run(Some(target), "fit.dc.gguf").unwrap();
    assert!(fitted <= target, "{fitted} > {target}");
    // Just enough: a byte under all-raw is reached by compressing one tensor, whichever the
    // measured profile ranks cheapest (at the halfway target above, that order decides
    // whether the last tensor is needed too, so it may end at `smallest`).
    let one = run(Some(all_raw - 1), "one.dc.gguf").unwrap();
    assert!(
        one < all_raw && one > smallest,
        "compressed more than needed: {one}"
    );
    let err = run(Some(smallest / 2), "no.dc.gguf").unwrap_err();
    assert!(
        matches!(err, dcgguf::dc::DcError::TargetTooSmall { target, smallest: s }
            if target == smallest / 2 && s > target),
        "{err}"
    );
    assert!(!dir.join("no.dc.gguf").exists());
}

/// What every front end calls for `--profile PATH [--storage-bps N]`: the saved profile as
/// is (nothing measured), planning for the given storage or else the measured one.
#[test]
fn load_model_for_reads_the_named_profile_and_plans_for_the_given_storage() {
    let dir = tmp_dir("request");
    let path = dir.join("profile.json");
    let (p, _) = load_or_probe(&path, &small(dir.path())).unwrap();
    let l = load_model_for(Some(path.as_os_str()), Some(123e6), false)
        .unwrap()
        .expect("a profile was asked for");
    assert_eq!(l.remeasured, None, "a valid profile is not measured again");
    assert_eq!(l.path, path);
    assert_eq!(l.model.storage_bps, 123e6);
    assert_eq!(l.model.profile().measured_unix, p.measured_unix);
    let l = load_model_for(Some(path.as_os_str()), None, true)
        .unwrap()
        .unwrap();
    assert_eq!(l.model.storage_bps, p.storage_bps());
    // A profile that is not there is measured and saved where it was named.
    let fresh = dir.join("sub/fresh.json");
    let l = load_model_for(Some(fresh.as_os_str()), Some(1e9), false)
        .unwrap()
        .unwrap();
    assert_eq!(l.remeasured, Some(Stale::Missing));
    assert!(load_profile(&fresh).is_ok());
    let e = load_model_for(Some(path.as_os_str()), Some(-1.0), false).unwrap_err();
    assert!(matches!(e, dcgguf::cost::CostError::StorageBps(_)), "{e}");
}

/// A saved profile reads back bit for bit: CI once measured 933836449.3097591 B/s and read
/// 933836449.3097593 back, because serde_json's default float parser may be one ulp off
/// (the `float_roundtrip` feature makes it exact).
#[test]
fn saved_profiles_read_back_bit_for_bit() {
    let dir = tmp_dir("roundtrip");
    let path = dir.join("profile.json");
    let (mut p, _) = load_or_probe(&path, &small(dir.path())).unwrap();
    let mut values = vec![933836449.3097591, 0.1 + 0.2, 1.0 / 3.0, 5e-324, f64::MAX];
    // Random finite bit patterns: every exponent, every mantissa.
    let mut rng = Rng::new(11);
    while values.len() < 200 {
        let v = f64::from_bits(rng.next_u64() >> 1);
        if v.is_finite() {
            values.push(v);
        }
    }
    for pair in values.chunks(2) {
        p.read_cold_bps = Some(pair[0]);
        p.read_warm_bps = pair[1];
        save_profile(&p, &path).unwrap();
        let back = load_profile(&path).unwrap();
        assert_eq!(
            back.read_cold_bps.map(f64::to_bits),
            Some(pair[0].to_bits())
        );
        assert_eq!(back.read_warm_bps.to_bits(), pair[1].to_bits());
    }
}
