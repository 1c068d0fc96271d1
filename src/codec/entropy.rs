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
        let h = &mut self.hist[plane];
        for &b in bytes {
            h[b as usize] += 1;
        }
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
}
