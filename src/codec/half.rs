//! fp16 / bf16 bits <-> f32, rounding to nearest even as ggml does (the `half` crate; its
//! bf16 NaN rule, `(bits >> 16) | 0x40`, is ggml's too). Bits in, bits out, because GGUF
//! tensors are little-endian byte arrays.

pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

pub fn f32_to_f16(f: f32) -> u16 {
    half::f16::from_f32(f).to_bits()
}

pub fn bf16_to_f32(h: u16) -> f32 {
    half::bf16::from_bits(h).to_f32()
}

pub fn f32_to_bf16(f: f32) -> u16 {
    half::bf16::from_f32(f).to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_roundtrips_every_finite_value() {
        for h in 0..=u16::MAX {
            if (h >> 10) & 0x1f == 31 {
                continue;
            }
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00); // tie to even
        assert_eq!(f32_to_f16(5.960_464_5e-8), 1);
    }

    /// ggml's `ggml_compute_fp32_to_bf16`, the reference the crate must match bit for bit.
    fn ggml_bf16(f: f32) -> u16 {
        let u = f.to_bits();
        if (u & 0x7fff_ffff) > 0x7f80_0000 {
            return ((u >> 16) | 64) as u16;
        }
        ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
    }

    #[test]
    fn bf16_matches_ggml_on_a_sweep_of_f32_bit_patterns() {
        // Every 4099th pattern covers every exponent, both signs, NaNs and ties.
        for bits in (0..=u32::MAX)
            .step_by(4099)
            .chain([0x3f80_8000, 0x7f7f_ffff, 0xffc0_0001])
        {
            let f = f32::from_bits(bits);
            assert_eq!(f32_to_bf16(f), ggml_bf16(f), "{bits:#010x}");
        }
        assert_eq!(bf16_to_f32(f32_to_bf16(3.5)), 3.5);
    }
}
