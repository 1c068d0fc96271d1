//! Decode time per tensor: each tensor decoded on its own 20 times, best time kept; prints the
//! tensors of at least `MIN_SHOWN` bytes and the totals for small (< 64 KiB) and large
//! tensors. Found that MiniLM Q8_0's F32 position embedding (3% of the bytes) took 11% of the
//! decode time. One thread with `RAYON_NUM_THREADS=1`.
//! `cargo run --release --example tensor_times FILE.dc.gguf`
use dcgguf::dc::DcFile;

const MIN_SHOWN: u64 = 500_000;
const SMALL: u64 = 64 << 10;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: tensor_times FILE.dc.gguf");
    let dc = DcFile::open(std::path::Path::new(&path)).expect("a DC file");
    let n = dc.tensor_count();
    let mut best = vec![f64::MAX; n];
    let mut bufs: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![0u8; dc.tensor_info(i).nbytes as usize])
        .collect();
    for _ in 0..20 {
        for (i, buf) in bufs.iter_mut().enumerate() {
            let t = std::time::Instant::now();
            dc.read_tensor(i, 0, buf).expect("decodes");
            best[i] = best[i].min(t.elapsed().as_secs_f64());
        }
    }
    let gbps = |bytes: u64, secs: f64| bytes as f64 / secs / 1e9;
    let mut totals = [(0u64, 0f64); 2];
    for (i, &secs) in best.iter().enumerate() {
        let t = dc.tensor_info(i);
        if t.nbytes >= MIN_SHOWN {
            println!(
                "{:40} {:>6} {:>11} B {:8.3} ms {:6.2} GB/s",
                t.name,
                t.ty.name(),
                t.nbytes,
                secs * 1e3,
                gbps(t.nbytes, secs)
            );
        }
        let total = &mut totals[usize::from(t.nbytes >= SMALL)];
        total.0 += t.nbytes;
        total.1 += secs;
    }
    for ((bytes, secs), what) in totals.iter().zip(["small", "large"]) {
        println!(
            "{what}: {bytes} B in {:.3} ms, {:.2} GB/s",
            secs * 1e3,
            gbps(*bytes, *secs)
        );
    }
}
