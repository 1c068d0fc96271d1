//! Serializes GGUF headers. Writing a parsed, unmodified header gives back the original bytes.

use super::parse::{GgufHeader, TensorInfo};
use super::value::{ArrayValue, KeyValue, Value};
use super::{GGUF_MAGIC, GgmlType};

/// Rounds `v` up to a multiple of the power of two `alignment`; `None` on overflow.
pub fn align_up(v: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    Some(v.checked_add(alignment - 1)? & !(alignment - 1))
}

/// Builds a GGUF header: metadata plus tensor infos, padded to the alignment.
pub struct HeaderWriter {
    version: u32,
    out: Vec<u8>,
    kv_count: u64,
    tensor_count: u64,
}

impl HeaderWriter {
    pub fn new(version: u32) -> HeaderWriter {
        HeaderWriter {
            version,
            out: Vec::new(),
            kv_count: 0,
            tensor_count: 0,
        }
    }

    pub fn kv(&mut self, kv: &KeyValue) -> &mut Self {
        assert_eq!(
            self.tensor_count, 0,
            "GGUF metadata must precede tensor infos"
        );
        put_bytes(&mut self.out, &kv.key);
        self.out
            .extend_from_slice(&(kv.value.value_type() as u32).to_le_bytes());
        put_value(&mut self.out, &kv.value);
        self.kv_count += 1;
        self
    }

    /// Adds a tensor info. GGUF stores all metadata before the tensor table, so every `kv`
    /// call must come before the first `tensor` call.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, offset: u64) -> &mut Self {
        let t = &mut self.out;
        put_bytes(t, name.as_bytes());
        t.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            t.extend_from_slice(&d.to_le_bytes());
        }
        t.extend_from_slice(&ty.id().to_le_bytes());
        t.extend_from_slice(&offset.to_le_bytes());
        self.tensor_count += 1;
        self
    }

    /// Finishes the header, zero-padded so its length is a multiple of `alignment`.
    pub fn finish(self, alignment: u64) -> Vec<u8> {
        let mut head = Vec::with_capacity(self.out.len() + 24 + alignment as usize);
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&self.version.to_le_bytes());
        head.extend_from_slice(&self.tensor_count.to_le_bytes());
        head.extend_from_slice(&self.kv_count.to_le_bytes());
        head.extend_from_slice(&self.out);
        let padded = align_up(head.len() as u64, alignment).expect("header fits in memory");
        head.resize(padded as usize, 0);
        head
    }
}

/// One tensor for [`build_file`]: name, ggml dims, type, data.
pub type TensorEntry = (String, Vec<u64>, GgmlType, Vec<u8>);

/// The tensors of a parsed file as [`build_file`] entries (data copied out of `bytes`, the
/// file `h` was parsed from and checked against with `check_data_fits`).
pub fn tensor_entries(h: &GgufHeader, bytes: &[u8]) -> Vec<TensorEntry> {
    h.tensors
        .iter()
        .map(|t| {
            let r = h.tensor_range(t);
            (
                t.name.clone(),
                t.dims.clone(),
                t.ty,
                bytes[r.start as usize..r.end as usize].to_vec(),
            )
        })
        .collect()
}

/// A whole GGUF v3 file: `kvs`, then `tensors` (name, ggml dims, type, data) laid out in order
/// at `alignment` (32, GGUF's default, when `general.alignment` is not among `kvs`).
pub fn build_file(kvs: &[KeyValue], tensors: &[TensorEntry]) -> Vec<u8> {
    const ALIGNMENT: u64 = 32;
    let mut w = HeaderWriter::new(3);
    for kv in kvs {
        w.kv(kv);
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        w.tensor(name, dims, *ty, offset);
        offset =
            align_up(offset + data.len() as u64, ALIGNMENT).expect("tensor data fits in memory");
    }
    let mut out = w.finish(ALIGNMENT);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
        let padded = align_up(out.len() as u64, ALIGNMENT).expect("fits in memory");
        out.resize(padded as usize, 0);
    }
    out
}

impl GgufHeader {
    /// Serializes this header (metadata, tensor infos, zero padding up to `data_offset`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = HeaderWriter::new(self.version);
        for kv in &self.kvs {
            w.kv(kv);
        }
        for TensorInfo {
            name,
            dims,
            ty,
            offset,
            ..
        } in &self.tensors
        {
            w.tensor(name, dims, *ty, *offset);
        }
        w.finish(self.alignment)
    }
}

impl Value {
    /// Bytes this value takes in a GGUF file (without its key and type code).
    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        put_value(&mut v, self);
        v.len()
    }
}

fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Scalar { ty, le } => {
            let w = ty.scalar_width().expect("scalar type has a width");
            out.extend_from_slice(&le[..w]);
        }
        Value::String(s) => put_bytes(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &ArrayValue) {
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        ArrayValue::Scalars { le, .. } => out.extend_from_slice(le),
        ArrayValue::Strings(items) => items.iter().for_each(|s| put_bytes(out, s)),
        ArrayValue::Arrays(items) => items.iter().for_each(|x| put_array(out, x)),
    }
}
