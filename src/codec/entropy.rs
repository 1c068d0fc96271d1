//! Order-0 entropy of byte planes: the size an ideal memoryless coder would reach.

/// Byte histograms, one per plane, accumulated over the chunks of a tensor.
#[derive(Clone, Debug, Default)]
pub struct PlaneStats {
    hist: Vec<[u64; 256]>,
}

impl PlaneStats {
    pub fn new(planes: usize) -> PlaneStats {
        PlaneStats {
            hist: vec![[0; 256]; planes],
        }
    }

    pub fn add(&mut self, plane: usize, bytes: &[u8]) {
        self.add_histogram(plane, &histogram(bytes));
    }

    /// Adds a plane's byte counts (from [`histogram`]).
    pub fn add_histogram(&mut self, plane: usize, counts: &[u64; 256]) {
        for (x, y) in self.hist[plane].iter_mut().zip(counts) {
            *x += y;
        }
    }

    /// Empties the histograms for a tensor of `planes` planes, keeping the allocation.
    pub fn reset(&mut self, planes: usize) {
        self.hist.clear();
        self.hist.resize(planes, [0; 256]);
    }

    pub fn merge(&mut self, other: &PlaneStats) {
        if self.hist.is_empty() {
            self.hist = other.hist.clone();
            return;
        }
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// Sum over planes of `n * H0(plane)`, in bytes.
    pub fn bound_bytes(&self) -> f64 {
        self.hist.iter().map(order0_bits).sum::<f64>() / 8.0
    }
}

/// Byte counts of `bytes`. Four interleaved tables: one table serializes on runs of the
/// same byte (each increment waits for the last), which planes are full of.
pub fn histogram(bytes: &[u8]) -> [u64; 256] {
    let mut t = [[0u32; 256]; 4];
    let mut out = [0u64; 256];
    // u32 counters cannot overflow within a block of 2^31 bytes.
    for block in bytes.chunks(1 << 31) {
        let mut quads = block.chunks_exact(4);
        for q in &mut quads {
            t[0][q[0] as usize] += 1;
            t[1][q[1] as usize] += 1;
            t[2][q[2] as usize] += 1;
            t[3][q[3] as usize] += 1;
        }
        for &b in quads.remainder() {
            t[0][b as usize] += 1;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o += t.iter().map(|t| u64::from(t[i])).sum::<u64>();
        }
        t = [[0; 256]; 4];
    }
    out
}

/// `n * H0` in bytes for one histogram: what an ideal order-0 coder would store.
pub fn order0_bytes(h: &[u64; 256]) -> f64 {
    order0_bits(h) / 8.0
}

/// `n * H0` in bits for one histogram.
fn order0_bits(h: &[u64; 256]) -> f64 {
    let n: u64 = h.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let nf = n as f64;
    h.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = c as f64;
            -c * (c / nf).log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_constant_bytes() {
        let mut s = PlaneStats::new(2);
        let all: Vec<u8> = (0..=255).collect();
        s.add(0, &all);
        s.add(1, &[7; 1000]);
        assert!((s.bound_bytes() - 256.0).abs() < 1e-9);
    }

    #[test]
    fn histogram_counts_every_byte() {
        let bytes: Vec<u8> = (0..1003u32).map(|i| (i * i % 7) as u8).collect();
        let mut want = [0u64; 256];
        for &b in &bytes {
            want[b as usize] += 1;
        }
        assert_eq!(histogram(&bytes), want);
        assert!((order0_bytes(&histogram(&[9; 64]))).abs() < 1e-12);
    }
}
