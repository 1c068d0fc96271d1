//! Tuning tool for the encoder's Zstd settings (how LEVEL_DEFAULT and LEVEL_MAX in
//! src/codec/chunk.rs were chosen): per-setting tensor ratio (stored / raw tensor bytes, with
//! the encoder's 0.5% rule for raw planes and chunks) and single-thread encode speed, on a
//! model's planes split in memory as `compress` splits them (1 MiB chunks, default
//! transforms).
//!
//! `cargo run --release --example levels -- FILE.gguf SPEC...`, SPEC being
//! `MAIN[|FALLBACK@EXCESS]`: `MAIN` and `FALLBACK` are `LEVEL[,strategy=N][,wl=N][,cl=N]
//! [,hl=N][,sl=N][,ml=N][,tl=N]` (Zstd parameters over the level's; `19s` is level 19's
//! shallow search); the fallback is tried on a plane whose main result exceeds its order-0
//! bound by more than the fraction EXCESS (negative: always), the smaller kept. The default
//! level is `'1,ml=7|1,ml=7,hl=6@0.01'`. With PER_PLANE=1 set, also prints stored bytes
//! against the order-0 bound per (type, plane).

use std::time::Instant;

use dcgguf::codec::{Layout, Transform};
use dcgguf::gguf::GgufHeader;
use zstd::zstd_safe::{CParameter as P, Strategy};

fn strategy(n: u32) -> Strategy {
    match n {
        1 => Strategy::ZSTD_fast,
        2 => Strategy::ZSTD_dfast,
        3 => Strategy::ZSTD_greedy,
        4 => Strategy::ZSTD_lazy,
        5 => Strategy::ZSTD_lazy2,
        6 => Strategy::ZSTD_btlazy2,
        7 => Strategy::ZSTD_btopt,
        8 => Strategy::ZSTD_btultra,
        _ => Strategy::ZSTD_btultra2,
    }
}

fn compressor(spec: &str) -> zstd::bulk::Compressor<'static> {
    let mut parts = spec.split(',');
    let first = parts.next().unwrap();
    let (level, shallow) = match first.strip_suffix('s') {
        Some(l) => (l.parse().unwrap(), true),
        None => (first.parse().unwrap(), false),
    };
    let mut c = zstd::bulk::Compressor::new(level).unwrap();
    c.include_checksum(false).unwrap();
    c.include_contentsize(true).unwrap();
    if shallow {
        for p in [
            P::Strategy(Strategy::ZSTD_btultra2),
            P::WindowLog(17),
            P::ChainLog(16),
            P::HashLog(16),
            P::SearchLog(1),
            P::MinMatch(3),
            P::TargetLength(8),
        ] {
            c.set_parameter(p).unwrap();
        }
    }
    for kv in parts {
        let (k, v) = kv.split_once('=').unwrap();
        let v: u32 = v.parse().unwrap();
        let p = match k {
            "strategy" => P::Strategy(strategy(v)),
            "wl" => P::WindowLog(v),
            "cl" => P::ChainLog(v),
            "hl" => P::HashLog(v),
            "sl" => P::SearchLog(v),
            "ml" => P::MinMatch(v),
            "tl" => P::TargetLength(v),
            _ => panic!("unknown key {k}"),
        };
        c.set_parameter(p).unwrap();
    }
    c
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = std::fs::read(&args[0]).unwrap();
    let h = GgufHeader::parse(&data).unwrap();
    // Split every chunk once (1 MiB chunks, as compress does).
    let mut chunks: Vec<(Vec<u8>, Vec<usize>, usize, String)> = Vec::new();
    let mut bounds: std::collections::BTreeMap<String, [u64; 256]> = Default::default();
    let mut raw_total = 0usize;
    for t in &h.tensors {
        let layout = Layout::new(Transform::default_for(t.ty), t.ty);
        let unit = layout.unit();
        let chunk_raw = ((1 << 20) / unit).max(1) * unit;
        let r = h.tensor_range(t);
        let src = &data[r.start as usize..r.end as usize];
        raw_total += src.len();
        for raw in src.chunks(chunk_raw) {
            let mut planes = Vec::new();
            layout.split(raw, &mut planes);
            let lens: Vec<usize> = layout.plane_lens(raw.len()).collect();
            let mut st = 0;
            for (i, &l) in lens.iter().enumerate() {
                let h = bounds.entry(format!("{:?}/{i}", t.ty)).or_insert([0; 256]);
                for &b in &planes[st..st + l] {
                    h[b as usize] += 1;
                }
                st += l;
            }
            chunks.push((planes, lens, raw.len(), format!("{:?}", t.ty)));
        }
    }
    println!(
        "{}: {} tensor bytes, {} chunks",
        args[0],
        raw_total,
        chunks.len()
    );
    for spec in &args[1..] {
        let (main, alt) = match spec.split_once('|') {
            Some((a, b)) => (a, Some(b)),
            None => (spec.as_str(), None),
        };
        let (alt, eps) = match alt.map(|b| b.split_once('@').unwrap()) {
            Some((b, e)) => (Some(compressor(b)), e.parse::<f64>().unwrap()),
            None => (None, 0.0),
        };
        let mut alt = alt;
        let mut c = compressor(main);
        let mut out2 = Vec::new();
        let mut retries = 0usize;
        let mut out = Vec::new();
        let mut stored = 0usize;
        let mut per: std::collections::BTreeMap<String, usize> = Default::default();
        let t0 = Instant::now();
        for (planes, lens, raw_len, ty) in &chunks {
            let mut start = 0;
            let mut chunk = lens.len() * 5;
            for (i, &len) in lens.iter().enumerate() {
                let plane = &planes[start..start + len];
                start += len;
                out.clear();
                out.reserve(zstd::zstd_safe::compress_bound(len));
                c.compress_to_buffer(plane, &mut out).unwrap();
                if let Some(b) = alt.as_mut() {
                    let over = eps < 0.0 || {
                        let mut h = [0u32; 256];
                        for &x in plane {
                            h[x as usize] += 1;
                        }
                        let n = len as f64;
                        let bound: f64 = h
                            .iter()
                            .filter(|&&c| c > 0)
                            .map(|&c| -(c as f64) * (c as f64 / n).log2())
                            .sum::<f64>()
                            / 8.0;
                        out.len() as f64 > bound * (1.0 + eps) + 64.0
                    };
                    if over {
                        retries += 1;
                        out2.clear();
                        out2.reserve(zstd::zstd_safe::compress_bound(len));
                        b.compress_to_buffer(plane, &mut out2).unwrap();
                        if out2.len() < out.len() {
                            std::mem::swap(&mut out, &mut out2);
                        }
                    }
                }
                let pays = (out.len() as f64) < len as f64 * 0.995;
                chunk += if pays { out.len() } else { len };
                *per.entry(format!("{ty}/{i}")).or_insert(0) += if pays { out.len() } else { len };
            }
            stored += if (chunk as f64) < *raw_len as f64 * 0.995 {
                chunk
            } else {
                *raw_len
            };
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{spec:40} ratio {:.5}  {:7.1} MB/s  retries {retries}",
            stored as f64 / raw_total as f64,
            raw_total as f64 / secs / 1e6
        );
        if std::env::var_os("PER_PLANE").is_some() {
            for (k, v) in &per {
                let h = &bounds[k];
                let n: u64 = h.iter().sum();
                let b: f64 = h
                    .iter()
                    .filter(|&&c| c > 0)
                    .map(|&c| -(c as f64) * (c as f64 / n as f64).log2())
                    .sum::<f64>()
                    / 8.0;
                println!(
                    "   {k:12} n {n:10} stored {v:10} bound {:10.0} ({:.4})",
                    b,
                    *v as f64 / b
                );
            }
        }
    }
}
