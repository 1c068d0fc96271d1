//! Decodes a DC file's whole original image N times into a 32 MiB buffer (as `dcgguf bench`
//! does) and prints GB/s per pass: a harness for `perf record`. One thread with
//! `RAYON_NUM_THREADS=1`. `cargo run --release --example decode_loop FILE [N]`
use dcgguf::dc::DcFile;
fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("path");
    let n: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(5);
    let dc = DcFile::open(std::path::Path::new(&path)).unwrap();
    let total = dc.original_size();
    let mut buf = vec![0u8; 32 << 20];
    for _ in 0..n {
        let t = std::time::Instant::now();
        let mut off = 0;
        while off < total {
            off += dc.read_at(off, &mut buf).unwrap() as u64;
        }
        eprintln!("{:.2} GB/s", total as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
}
