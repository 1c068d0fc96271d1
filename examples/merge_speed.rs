//! Merge speed of the fold-split layouts (Q4_K, Q6_K, Q8_0) with this CPU's dispatch: planes and
//! output of 256 KiB, 1 MiB (cache resident) and 32 MiB, and 1 MiB of planes into a 32 MiB output
//! next to memcpy into it (what shows the merge is bound by its stores' line reads).
//! `cargo run --release --example merge_speed`
use dcgguf::codec::transform::{Layout, Transform};
use dcgguf::gguf::GgmlType;
use std::time::Instant;
fn main() {
    for (ty, name) in [
        (GgmlType::Q4_K, "Q4_K"),
        (GgmlType::Q6_K, "Q6_K"),
        (GgmlType::Q8_0, "Q8_0"),
    ] {
        let layout = Layout::new(Transform::default_for(ty), ty);
        let unit = layout.unit();
        for kib in [256usize, 1024, 32768] {
            let n = (kib << 10) / unit * unit;
            let mut st = 1u64;
            let src: Vec<u8> = (0..n)
                .map(|_| {
                    st = st.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (st >> 56) as u8
                })
                .collect();
            let mut planes = Vec::new();
            layout.split(&src, &mut planes);
            let lens: Vec<usize> = layout.plane_lens(n).collect();
            let mut refs = Vec::new();
            let mut off = 0;
            for l in &lens {
                refs.push(&planes[off..off + l]);
                off += l;
            }
            let mut dst = vec![0u8; n];
            let reps = (1usize << 30) / n;
            let t = Instant::now();
            for _ in 0..reps {
                layout.merge(&refs, &mut dst);
                std::hint::black_box(&mut dst);
            }
            let dt = t.elapsed().as_secs_f64();
            if let Some(i) = dst.iter().zip(&src).position(|(a, b)| a != b) {
                println!(
                    "{name} MISMATCH at {i} (in block {}): {:02x} vs {:02x}",
                    i % unit,
                    dst[i],
                    src[i]
                );
                return;
            }
            println!(
                "{name} {:?} {kib} KiB: {:.2} GB/s",
                Transform::default_for(ty),
                (n * reps) as f64 / dt / 1e9
            );
            if kib == 1024 {
                // planes cache resident, output streamed through 32 MiB
                let mut big = vec![0u8; 32 * n];
                let t = Instant::now();
                for r in 0..reps {
                    let k = r % 32;
                    layout.merge(&refs, &mut big[k * n..(k + 1) * n]);
                }
                let dt = t.elapsed().as_secs_f64();
                println!(
                    "{name} 1 MiB planes -> 32 MiB out: {:.2} GB/s",
                    (n * reps) as f64 / dt / 1e9
                );
                let t = Instant::now();
                for r in 0..reps {
                    let k = r % 32;
                    big[k * n..(k + 1) * n].copy_from_slice(&src);
                }
                let dt = t.elapsed().as_secs_f64();
                println!(
                    "{name} memcpy 1 MiB -> 32 MiB out: {:.2} GB/s",
                    (n * reps) as f64 / dt / 1e9
                );
            }
        }
    }
}
