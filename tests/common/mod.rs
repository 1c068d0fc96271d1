//! Shared helpers for the integration tests: a deterministic PRNG, realistic tensor data, a
//! synthetic GGUF builder (on top of `dcgguf::gguf::HeaderWriter`), a raw byte writer for
//! hostile headers, and self-cleaning temporary directories.
//!
//! Every test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dcgguf::dc::{CompressOptions, CompressReport, DcFile, compress_file};
use dcgguf::gguf::{
    ArrayValue, GgmlType, GgufHeader, HeaderWriter, KeyValue, Value, ValueType, align_up,
};

// A test binary using both tests/common and tests/llama_support compiles this twice: harmless,
// it holds only functions of the environment.
#[allow(clippy::duplicate_mod)]
#[path = "../minilm_paths/mod.rs"]
pub mod minilm_paths;

// ---------------------------------------------------------------------------------------------
// PRNG and number formats
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, deterministic; good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// Uniform in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn gauss(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    /// A byte that is never zero.
    pub fn nonzero_u8(&mut self) -> u8 {
        1 + (self.below(255) as u8)
    }
}

pub use dcgguf::codec::half::{f32_to_bf16, f32_to_f16};

// ---------------------------------------------------------------------------------------------
// Tensor data
// ---------------------------------------------------------------------------------------------

/// Every tensor type the synthetic models use: plain floats, the classic and K quants, an
/// opaque IQ type (no field layout), IQ4_NL and a few integer/float element types.
pub fn all_types() -> Vec<GgmlType> {
    let mut v = vec![
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ2_XS,
        GgmlType::IQ4_NL,
        GgmlType::I8,
        GgmlType::I32,
    ];
    v.extend(["F64", "I16", "Q8_K", "TQ2_0"].map(|n| GgmlType::from_name(n).expect(n)));
    v
}

/// Block layouts of ggml's quantized types (ggml-common.h), kept here independently of the
/// library: `h` fp16 scale, `f` f32 scale, `q` packed 4-bit quants, `i` int8 quants, `b` other
/// bytes (packed scales, high bits, sums). `None` for opaque types.
fn block_layout(name: &str) -> Option<&'static [(char, usize)]> {
    Some(match name {
        "Q4_0" | "IQ4_NL" => &[('h', 2), ('q', 16)],
        "Q4_1" => &[('h', 2), ('h', 2), ('q', 16)],
        "Q5_0" => &[('h', 2), ('b', 4), ('q', 16)],
        "Q5_1" => &[('h', 2), ('h', 2), ('b', 4), ('q', 16)],
        "Q8_0" => &[('h', 2), ('i', 32)],
        "Q2_K" => &[('b', 16), ('q', 64), ('h', 2), ('h', 2)],
        "Q3_K" => &[('b', 32), ('q', 64), ('b', 12), ('h', 2)],
        "Q4_K" => &[('h', 2), ('h', 2), ('b', 12), ('q', 128)],
        "Q5_K" => &[('h', 2), ('h', 2), ('b', 12), ('b', 32), ('q', 128)],
        "Q6_K" => &[('q', 128), ('b', 64), ('i', 16), ('h', 2)],
        "Q8_K" => &[('f', 4), ('i', 256), ('b', 32)],
        _ => return None,
    })
}

/// A quantized nibble drawn from a bell-shaped distribution centred on 8.
fn nibble(rng: &mut Rng) -> u8 {
    (8.0 + 2.5 * rng.gauss()).round().clamp(0.0, 15.0) as u8
}

/// Realistic bytes for `n_elems` elements of `ty` (a whole number of blocks): gaussian
/// weights for float types, blocks with small positive fp16 scales and bell-shaped quants
/// for quantized types, random bytes after an fp16 scale for opaque types.
pub fn tensor_data(ty: GgmlType, n_elems: u64, rng: &mut Rng) -> Vec<u8> {
    let nbytes = ty.nbytes(n_elems).expect("whole blocks") as usize;
    let mut out = Vec::with_capacity(nbytes);
    let weight = |rng: &mut Rng| (rng.gauss() * 0.02) as f32;
    match ty.name() {
        "F32" => (0..n_elems).for_each(|_| out.extend(weight(rng).to_le_bytes())),
        "F16" => (0..n_elems).for_each(|_| out.extend(f32_to_f16(weight(rng)).to_le_bytes())),
        "BF16" => (0..n_elems).for_each(|_| out.extend(f32_to_bf16(weight(rng)).to_le_bytes())),
        "F64" => (0..n_elems).for_each(|_| out.extend((rng.gauss() * 0.02).to_le_bytes())),
        "I8" => (0..n_elems).for_each(|_| out.push((rng.gauss() * 20.0).round() as i8 as u8)),
        "I16" => (0..n_elems)
            .for_each(|_| out.extend(((rng.gauss() * 300.0).round() as i16).to_le_bytes())),
        "I32" => (0..n_elems).for_each(|_| out.extend((rng.below(50_000) as i32).to_le_bytes())),
        name => {
            let blocks = n_elems / ty.block_elems();
            let layout = block_layout(name);
            for _ in 0..blocks {
                let start = out.len();
                let Some(layout) = layout else {
                    // Opaque block (IQ*, TQ*): an fp16 scale first, then bits.
                    out.extend(f32_to_f16(0.001 + 0.02 * rng.unit() as f32).to_le_bytes());
                    while out.len() < start + ty.block_bytes() as usize {
                        out.push(rng.u8());
                    }
                    continue;
                };
                for &(kind, n) in layout {
                    match kind {
                        'h' => {
                            let scale = 0.0005 + 0.01 * rng.unit() as f32;
                            out.extend(f32_to_f16(scale).to_le_bytes());
                        }
                        'f' => out.extend((0.01 * rng.unit() as f32).to_le_bytes()),
                        'i' => (0..n).for_each(|_| {
                            out.push((rng.gauss() * 40.0).round().clamp(-127.0, 127.0) as i8 as u8)
                        }),
                        'q' => (0..n).for_each(|_| {
                            let b = nibble(rng) | (nibble(rng) << 4);
                            out.push(b)
                        }),
                        _ => (0..n).for_each(|_| out.push(rng.u8() & 0x3F)),
                    }
                }
                assert_eq!(out.len() - start, ty.block_bytes() as usize, "{ty}");
            }
        }
    }
    assert_eq!(out.len(), nbytes, "{ty}");
    out
}

// ---------------------------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------------------------

pub fn scalar(ty: ValueType, bytes: &[u8]) -> Value {
    assert_eq!(Some(bytes.len()), ty.scalar_width());
    let mut le = [0u8; 8];
    le[..bytes.len()].copy_from_slice(bytes);
    Value::Scalar { ty, le }
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue::new(key, value)
}

pub fn str_array(items: impl IntoIterator<Item = String>) -> Value {
    Value::Array(ArrayValue::Strings(
        items.into_iter().map(String::into_bytes).collect(),
    ))
}

pub fn scalars(ty: ValueType, le: Vec<u8>) -> ArrayValue {
    ArrayValue::Scalars { ty, le }
}

/// Metadata exercising every value type: all scalars (odd bit patterns kept exactly: NaN with
/// payload, -0.0, a bool byte of 2), strings (empty, non-UTF-8), arrays of every scalar type,
/// empty arrays, arrays of strings, arrays nested three deep, and values over 1 KiB (which the
/// compressor moves out of the clear into `dc.moved_keys`).
pub fn rich_metadata(arch: Option<&str>) -> Vec<KeyValue> {
    use ValueType as T;
    let mut v = Vec::new();
    if let Some(arch) = arch {
        v.push(kv("general.architecture", Value::string(arch)));
    }
    v.extend([
        kv("general.name", Value::string("synthetic test model")),
        kv("test.u8", scalar(T::U8, &[200])),
        kv("test.i8", scalar(T::I8, &(-5i8).to_le_bytes())),
        kv("test.u16", scalar(T::U16, &60_000u16.to_le_bytes())),
        kv("test.i16", scalar(T::I16, &(-30_000i16).to_le_bytes())),
        kv("test.u32", Value::u32(4_000_000_000)),
        kv("test.i32", scalar(T::I32, &(-7i32).to_le_bytes())),
        kv("test.f32", Value::f32(0.125)),
        kv(
            "test.f32_nan",
            scalar(T::F32, &0x7FC0_1234u32.to_le_bytes()),
        ),
        kv("test.bool", scalar(T::Bool, &[1])),
        kv("test.bool_odd", scalar(T::Bool, &[2])),
        kv("test.u64", Value::u64(u64::MAX - 1)),
        kv("test.i64", scalar(T::I64, &i64::MIN.to_le_bytes())),
        kv("test.f64", scalar(T::F64, &(-0.0f64).to_le_bytes())),
        kv("test.string_empty", Value::string("")),
        kv(
            "test.string_not_utf8",
            Value::String(vec![0xFF, 0xFE, b'a', 0xC0]),
        ),
        kv(
            "test.arr_u8",
            Value::Array(scalars(T::U8, vec![1, 2, 3, 255])),
        ),
        kv(
            "test.arr_i16",
            Value::Array(scalars(
                T::I16,
                [-1i16, 2, -300]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            )),
        ),
        kv(
            "test.arr_f32",
            Value::Array(scalars(
                T::F32,
                [0.5f32, -1.5, f32::INFINITY]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            )),
        ),
        kv(
            "test.arr_u64",
            Value::Array(scalars(
                T::U64,
                [7u64, u64::MAX]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            )),
        ),
        kv(
            "test.arr_f64",
            Value::Array(scalars(T::F64, 3.25f64.to_le_bytes().to_vec())),
        ),
        kv(
            "test.arr_bool",
            Value::Array(scalars(T::Bool, vec![0, 1, 1, 0])),
        ),
        kv(
            "test.arr_i8_u16_i32_i64",
            Value::Array(ArrayValue::Arrays(vec![
                scalars(T::I8, vec![0x80, 0x7F]),
                scalars(T::U16, 513u16.to_le_bytes().to_vec()),
                scalars(T::I32, (-9i32).to_le_bytes().to_vec()),
                scalars(T::I64, (-10i64).to_le_bytes().to_vec()),
                scalars(T::U32, 11u32.to_le_bytes().to_vec()),
            ])),
        ),
        kv("test.arr_empty_u32", Value::Array(scalars(T::U32, vec![]))),
        kv(
            "test.arr_empty_str",
            Value::Array(ArrayValue::Strings(vec![])),
        ),
        kv(
            "test.arr_empty_arr",
            Value::Array(ArrayValue::Arrays(vec![])),
        ),
        kv(
            "test.arr_str",
            str_array(["alpha", "", "gamma"].map(String::from)),
        ),
        kv(
            "test.arr_nested",
            Value::Array(ArrayValue::Arrays(vec![
                ArrayValue::Arrays(vec![
                    scalars(T::U8, vec![1, 2]),
                    ArrayValue::Strings(vec![b"x".to_vec(), vec![0xFF]]),
                ]),
                ArrayValue::Arrays(vec![]),
                scalars(T::F32, 1.0f32.to_le_bytes().to_vec()),
            ])),
        ),
        // Over 1 KiB: moved out of the clear metadata.
        kv(
            "tokenizer.ggml.tokens",
            str_array((0..400).map(|i| format!("tok_{i}"))),
        ),
        kv(
            "tokenizer.ggml.scores",
            Value::Array(scalars(
                T::F32,
                (0..400)
                    .flat_map(|i| (-(i as f32) / 7.0).to_le_bytes())
                    .collect(),
            )),
        ),
        kv(
            "tokenizer.chat_template",
            Value::string(&"{{ x }}".repeat(200)),
        ),
        // Exactly at the limit (8-byte length + 1016 bytes = 1024): stays in the clear.
        kv("test.string_1024", Value::string(&"a".repeat(1016))),
        // One byte over: moved.
        kv("test.string_1025", Value::string(&"b".repeat(1017))),
    ]);
    v
}

// ---------------------------------------------------------------------------------------------
// GGUF builder
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

impl Tensor {
    /// A tensor with realistic random contents for its type.
    pub fn random(name: &str, dims: &[u64], ty: GgmlType, rng: &mut Rng) -> Tensor {
        let n: u64 = dims.iter().product();
        Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data: tensor_data(ty, n, rng),
        }
    }

    /// A tensor whose data is given.
    pub fn with_data(name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Tensor {
        let n: u64 = dims.iter().product();
        assert_eq!(ty.nbytes(n), Some(data.len() as u64), "{name}");
        Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        }
    }
}

/// A synthetic GGUF file. [`GgufBuilder::build`] lays tensors out like llama.cpp's writer
/// (each at an aligned offset) with optional extra gaps, non-zero padding, reversed data
/// order and trailing bytes.
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    pub version: u32,
    pub kvs: Vec<KeyValue>,
    pub tensors: Vec<Tensor>,
    pub alignment: u64,
    /// Extra bytes left between consecutive tensors (and after the last one).
    pub extra_gap: u64,
    /// Fill padding and gaps (also the header padding) with non-zero random bytes.
    pub fill_padding: bool,
    /// Store tensor data in the reverse of the tensor-table order.
    pub reverse_data: bool,
    /// Bytes appended after the data section.
    pub trailing: Vec<u8>,
    /// Drop the alignment padding at the end of the header (only sensible with no tensors
    /// and no trailing bytes: the file then ends before `data_offset`).
    pub no_header_padding: bool,
    pub seed: u64,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            extra_gap: 0,
            fill_padding: false,
            reverse_data: false,
            trailing: Vec::new(),
            no_header_padding: false,
            seed: 1,
        }
    }
}

impl GgufBuilder {
    pub fn new() -> GgufBuilder {
        GgufBuilder::default()
    }

    pub fn kv(mut self, key: &str, value: Value) -> Self {
        self.kvs.push(kv(key, value));
        self
    }

    pub fn tensor(mut self, t: Tensor) -> Self {
        self.tensors.push(t);
        self
    }

    /// Sets the alignment and writes it as `general.alignment` (u32).
    pub fn alignment(mut self, a: u64) -> Self {
        self.alignment = a;
        self.kvs.retain(|kv| kv.key != b"general.alignment");
        self.kvs.push(kv("general.alignment", Value::u32(a as u32)));
        self
    }

    /// Data offsets (relative to the data section) in tensor-table order, and the data
    /// section length.
    pub fn layout(&self) -> (Vec<u64>, u64) {
        let mut order: Vec<usize> = (0..self.tensors.len()).collect();
        if self.reverse_data {
            order.reverse();
        }
        let mut offsets = vec![0; self.tensors.len()];
        let mut pos = 0u64;
        for i in order {
            offsets[i] = pos;
            let end = pos + self.tensors[i].data.len() as u64 + self.extra_gap;
            pos = align_up(end, self.alignment).unwrap();
        }
        (offsets, pos)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut rng = Rng::new(self.seed ^ 0xFACE);
        let mut w = HeaderWriter::new(self.version);
        for kv in &self.kvs {
            w.kv(kv);
        }
        let (offsets, data_len) = self.layout();
        for (t, off) in self.tensors.iter().zip(&offsets) {
            w.tensor(&t.name, &t.dims, t.ty, *off);
        }
        let mut file = w.finish(self.alignment);
        let parsed = GgufHeader::parse(&file).expect("builder writes a valid header");
        assert_eq!(parsed.data_offset, file.len() as u64);
        if self.no_header_padding {
            assert!(self.tensors.is_empty() && self.trailing.is_empty());
            file.truncate(parsed.infos_end as usize);
            return file;
        }
        let fill = |rng: &mut Rng, n: usize| -> Vec<u8> {
            if self.fill_padding {
                (0..n).map(|_| rng.nonzero_u8()).collect()
            } else {
                vec![0; n]
            }
        };
        if self.fill_padding {
            let pad = file.len() - parsed.infos_end as usize;
            let bytes = fill(&mut rng, pad);
            file[parsed.infos_end as usize..].copy_from_slice(&bytes);
        }
        let data_start = file.len();
        file.extend(fill(&mut rng, data_len as usize));
        for (t, off) in self.tensors.iter().zip(&offsets) {
            let at = data_start + *off as usize;
            file[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        file.extend_from_slice(&self.trailing);
        file
    }
}

/// One tensor of every type in [`all_types`], a few KiB each, with realistic data.
pub fn all_type_tensors(rng: &mut Rng) -> Vec<Tensor> {
    all_types()
        .into_iter()
        .enumerate()
        .map(|(i, ty)| {
            let be = ty.block_elems();
            let dims = if be == 1 {
                vec![96, 24 + i as u64]
            } else {
                vec![be * 4, 3]
            };
            Tensor::random(&format!("blk.{i}.{}.weight", ty.name()), &dims, ty, rng)
        })
        .collect()
}

/// The standard synthetic model: rich metadata and one tensor of every type.
pub fn standard_model(seed: u64) -> GgufBuilder {
    let mut rng = Rng::new(seed);
    GgufBuilder {
        kvs: rich_metadata(Some("llama")),
        tensors: all_type_tensors(&mut rng),
        seed,
        ..GgufBuilder::default()
    }
}

/// A small model (a few KiB) for loops that run thousands of times.
pub fn small_model(seed: u64) -> GgufBuilder {
    let mut rng = Rng::new(seed);
    GgufBuilder {
        kvs: vec![
            kv("general.architecture", Value::string("llama")),
            kv("general.name", Value::string("small")),
            kv(
                "test.arr",
                Value::Array(scalars(ValueType::U16, vec![1, 0, 2, 0])),
            ),
        ],
        tensors: vec![
            Tensor::random("a.f16", &[64, 8], GgmlType::F16, &mut rng),
            Tensor::random("b.q8_0", &[64, 4], GgmlType::Q8_0, &mut rng),
            Tensor::random("c.q4_k", &[256, 2], GgmlType::Q4_K, &mut rng),
            Tensor::random("d.f32", &[40], GgmlType::F32, &mut rng),
        ],
        trailing: vec![1, 2, 3],
        seed,
        ..GgufBuilder::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw header bytes, for hostile inputs the builder refuses to write
// ---------------------------------------------------------------------------------------------

/// Appends GGUF primitives to a byte vector.
#[derive(Clone, Debug, Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version and the two counts.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }

    pub fn pos(&self) -> u64 {
        self.0.len() as u64
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// A GGUF string: u64 length then bytes.
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).bytes(s)
    }

    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(ValueType::U32 as u32).u32(v)
    }

    pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.str(key.as_bytes())
            .u32(ValueType::String as u32)
            .str(v.as_bytes())
    }

    pub fn tensor_info(
        &mut self,
        name: &[u8],
        dims: &[u64],
        type_id: u32,
        offset: u64,
    ) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(type_id).u64(offset)
    }

    /// Zero padding up to a multiple of `alignment`.
    pub fn pad(&mut self, alignment: u64) -> &mut Self {
        let to = align_up(self.pos(), alignment).unwrap();
        self.0.resize(to as usize, 0);
        self
    }

    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("dcgguf-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `bytes` to `name` in this directory and returns the path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }

    /// Names of leftover temporary outputs (`.NAME.dcgguf-tmp-PID`, formerly `.NAME.tmp-PID`).
    pub fn tmp_leftovers(&self) -> Vec<String> {
        tmp_leftovers(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tmp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && (n.contains(".tmp-") || n.contains("dcgguf-tmp-")))
        .collect()
}

/// Compresses with no progress reporting.
pub fn compress(input: &Path, output: &Path, opts: &CompressOptions) -> CompressReport {
    compress_file(input, output, opts, &|_| {})
        .unwrap_or_else(|e| panic!("compress {}: {e}", input.display()))
}

pub fn opts_chunk(chunk_size: usize) -> CompressOptions {
    CompressOptions {
        chunk_size,
        ..CompressOptions::default()
    }
}

/// Writes `original` as `in.gguf` in `dir`, compresses it with `opts` to `out.dc.gguf` and
/// returns the opened DC file.
pub fn compress_bytes(dir: &TempDir, original: &[u8], opts: &CompressOptions) -> DcFile {
    let input = dir.write("in.gguf", original);
    let output = dir.join("out.dc.gguf");
    let _ = std::fs::remove_file(&output);
    compress(&input, &output, opts);
    DcFile::open(&output).unwrap_or_else(|e| panic!("open DC file: {e}"))
}

/// Absolute byte range of a DC file's `dc.data` tensor.
pub fn dc_data_range(dc: &DcFile) -> std::ops::Range<u64> {
    let t = dc
        .dc_header
        .tensors
        .iter()
        .find(|t| t.name == "dc.data")
        .expect("dc.data");
    dc.dc_header.tensor_range(t)
}

/// Absolute byte range of a DC file's `dc.index` tensor.
pub fn dc_index_range(dc: &DcFile) -> std::ops::Range<u64> {
    let t = dc
        .dc_header
        .tensors
        .iter()
        .find(|t| t.name == "dc.index")
        .expect("dc.index");
    dc.dc_header.tensor_range(t)
}

/// Absolute file range of chunk `c` of original tensor `i` inside a DC file.
pub fn chunk_range(dc: &DcFile, i: usize, c: usize) -> std::ops::Range<u64> {
    let e = &dc.index.tensors[i];
    let data = dc_data_range(dc);
    let start = data.start
        + e.data_offset
        + e.chunks[..c]
            .iter()
            .map(|ch| u64::from(ch.stored_len))
            .sum::<u64>();
    start..start + u64::from(e.chunks[c].stored_len)
}

/// Position of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Offset of the value of metadata key `key` in a GGUF file (after key and type code).
pub fn value_offset(file: &[u8], key: &str) -> usize {
    let mut pat = (key.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(key.as_bytes());
    find(file, &pat).unwrap_or_else(|| panic!("key {key} not found")) + pat.len() + 4
}

/// Environment flag set to "1".
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

// ---------------------------------------------------------------------------------------------
// Real models
// ---------------------------------------------------------------------------------------------

/// A MiniLM test model by file name: from the shared models folder if it is there, else from
/// the copy scripts/fetch-models.sh converts (search order: tests/minilm_paths). When absent
/// from both, the path it would have in the first shared folder (callers check existence).
pub fn shared_model(file: &str) -> PathBuf {
    minilm_paths::find_minilm(file).unwrap_or_else(|_| minilm_paths::shared_dirs()[0].join(file))
}

/// Where `scripts/fetch-models.sh` puts fetched models: `$DCGGUF_MODELS`, else
/// `${DCGGUF_CACHE:-$HOME/.cache/dcgguf}/models`.
pub fn fetched_model(file: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("DCGGUF_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join(file);
    }
    let cache = std::env::var_os("DCGGUF_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dcgguf")
        });
    cache.join("models").join(file)
}

/// A real model the test needs: absent is a failure. A test that needs one is ignored by
/// `#[cfg_attr(not(dcgguf_minilm), ignore = ...)]` (or `dcgguf_smollm2`) when build.rs found
/// it absent, so reaching here without it means it vanished since the build, or the test was
/// run with `--include-ignored`.
#[track_caller]
pub fn require_model(path: &Path) -> &Path {
    if !path.is_file() {
        panic!(
            "{} is absent: run scripts/fetch-models.sh (or set DCGGUF_SHARED_MODELS / \
             DCGGUF_MODELS)",
            path.display()
        );
    }
    path
}

/// Prints a framed message straight to the process's stderr, bypassing the test harness's
/// output capture (which hides `eprintln!` of passing tests), so skips are always visible.
pub fn loud(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n**********\n{msg}\n**********");
}
