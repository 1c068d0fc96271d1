//! Parses a GGUF header (magic, metadata, tensor infos) from bytes, strictly and without panics.

use std::collections::HashSet;

use super::value::{ArrayValue, KeyValue, Value, ValueType};
use super::write::align_up;
use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufError, MAX_ARRAY_NESTING, MAX_DIMS, MAX_NAME_LEN,
    MAX_STRING_OR_ARRAY_BYTES, Result,
};

/// One tensor's entry in the GGUF tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the tensor's data, relative to the start of the data section.
    pub offset: u64,
    /// Byte size derived from type and shape (checked).
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn n_elems(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header. `data_offset` is where the data section starts in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub kvs: Vec<KeyValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// End of the metadata section, where the tensor-info table starts.
    pub kv_end: u64,
    /// End of the tensor-info table (before alignment padding).
    pub infos_end: u64,
    /// Start of the data section: `infos_end` rounded up to `alignment`.
    pub data_offset: u64,
    /// Key and element count of each array value that
    /// [`GgufHeader::parse_without_arrays`] left out of `kvs` (empty after a full parse):
    /// how large a vocabulary is, without its strings ([`GgufHeader::array_len`]).
    pub skipped_arrays: Vec<(Vec<u8>, u64)>,
}

impl GgufHeader {
    /// Parses the header at the start of `bytes` (the whole file, or at least its header).
    /// Tensor layout is checked (alignment, overlaps, sizes); whether the data fits in the file
    /// is checked by [`GgufHeader::check_data_fits`].
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader> {
        Self::parse_with(bytes, true)
    }

    /// [`GgufHeader::parse`] that checks array values (tokenizer vocabularies, merges) but
    /// leaves them out of `kvs`: for readers that only need the tensors and scalar metadata,
    /// without 10^5 string allocations.
    pub fn parse_without_arrays(bytes: &[u8]) -> Result<GgufHeader> {
        Self::parse_with(bytes, false)
    }

    fn parse_with(bytes: &[u8], keep_arrays: bool) -> Result<GgufHeader> {
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            keep_arrays,
        };
        let magic = r.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = r.u32("version")?;
        if version & 0xFFFF == 0 && version != 0 {
            return Err(GgufError::BigEndian { raw: version });
        }
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Smallest possible entries bound the counts by the bytes left, so hostile counts
        // cannot make us allocate more than the file could describe.
        r.check_count("metadata count", n_kv, 13)?;
        let mut kvs = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        let mut skipped_arrays = Vec::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let key_name = String::from_utf8_lossy(&key).into_owned();
            let type_at = r.pos as u64;
            let code = r.u32("value type")?;
            let ty = ValueType::from_code(code).ok_or_else(|| GgufError::BadValueType {
                key: key_name.clone(),
                offset: type_at,
                code,
            })?;
            // An array `general.alignment` is kept, and rejected below, by both parses.
            let keep = keep_arrays || key == b"general.alignment";
            r.keep_arrays = keep;
            let value_at = r.pos;
            let value = r.value(ty, &key_name, 0)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::DuplicateKey(key_name));
            }
            if keep || !matches!(value, Value::Array(_)) {
                kvs.push(KeyValue { key, value });
            } else {
                // The count that `value` just read and checked, after the element type.
                let mut count = Reader {
                    buf: bytes,
                    pos: value_at + 4,
                    keep_arrays,
                };
                skipped_arrays.push((key, count.u64("array length")?));
            }
        }
        let alignment = match kvs.iter().find(|kv| kv.key == b"general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(kv) => match &kv.value {
                Value::Scalar {
                    ty: ValueType::U32, ..
                } => {
                    let a = kv.value.as_u64().unwrap_or(0);
                    if a == 0 || !a.is_power_of_two() {
                        return Err(GgufError::BadAlignment(a.to_string()));
                    }
                    a
                }
                other => return Err(GgufError::BadAlignment(format!("{other}"))),
            },
        };

        let kv_end = r.pos as u64;
        r.check_count("tensor count", n_tensors, 24)?;
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        for index in 0..n_tensors {
            let name_at = r.pos as u64;
            let name = String::from_utf8(r.string("tensor name")?).map_err(|_| {
                GgufError::BadTensorName {
                    index,
                    offset: name_at,
                }
            })?;
            if name.len() >= MAX_NAME_LEN {
                return Err(GgufError::NameTooLong {
                    len: name.len(),
                    name,
                });
            }
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims as usize > MAX_DIMS {
                return Err(GgufError::TooManyDims { name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut n_elems: u64 = 1;
            for dim in 0..n_dims as usize {
                let value = r.u64("tensor dimension")?;
                n_elems = match n_elems.checked_mul(value) {
                    Some(n) if value <= i64::MAX as u64 && n <= i64::MAX as u64 => n,
                    _ => return Err(GgufError::BadDim { name, dim, value }),
                };
                dims.push(value);
            }
            let id = r.u32("tensor type")?;
            let ty = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownType {
                name: name.clone(),
                id,
            })?;
            let offset = r.u64("tensor offset")?;
            let nbytes = ty.nbytes(n_elems).ok_or_else(|| GgufError::BadShape {
                name: name.clone(),
                ty,
                elems: n_elems,
            })?;
            if offset % alignment != 0 {
                return Err(GgufError::MisalignedOffset {
                    name,
                    offset,
                    alignment,
                });
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                nbytes,
            });
        }
        check_no_overlap(&tensors)?;
        let infos_end = r.pos as u64;
        let data_offset = align_up(infos_end, alignment).ok_or_else(|| GgufError::TooLarge {
            what: "header size".into(),
            offset: infos_end,
            value: infos_end,
            limit: u64::MAX - alignment,
        })?;
        Ok(GgufHeader {
            version,
            kvs,
            tensors,
            alignment,
            kv_end,
            infos_end,
            data_offset,
            skipped_arrays,
        })
    }

    /// Checks that every tensor's data lies inside a file of `file_len` bytes.
    pub fn check_data_fits(&self, file_len: u64) -> Result<()> {
        for t in &self.tensors {
            let start = self.data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.nbytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::DataPastEof {
                        name: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    });
                }
            }
        }
        Ok(())
    }

    /// Looks up a metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kvs
            .iter()
            .find(|kv| kv.key == key.as_bytes())
            .map(|kv| &kv.value)
    }

    /// Elements of the array value at `key`, whether the parse kept its values or not.
    pub fn array_len(&self, key: &str) -> Option<u64> {
        match self.get(key) {
            Some(Value::Array(a)) => Some(a.len() as u64),
            Some(_) => None,
            None => self
                .skipped_arrays
                .iter()
                .find(|(k, _)| k == key.as_bytes())
                .map(|&(_, len)| len),
        }
    }

    /// Whether the token embedding (`token_embd.weight`) is read only by row lookups: it is
    /// not when it doubles as the output head, which it does unless the model has an
    /// `output.weight` of its own or pools its outputs (an embedding model's
    /// `<arch>.pooling_type`).
    pub fn token_embedding_is_lookup_only(&self) -> bool {
        let pooled = self
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .is_some_and(|arch| self.get(&format!("{arch}.pooling_type")).is_some());
        pooled || self.tensors.iter().any(|t| t.name == "output.weight")
    }

    /// The tensor that a model reads only by row lookups, a few rows a token: the token
    /// embedding where it is not the output head too
    /// ([`GgufHeader::token_embedding_is_lookup_only`]).
    pub fn lookup_table(&self) -> Option<&TensorInfo> {
        if !self.token_embedding_is_lookup_only() {
            return None;
        }
        self.tensors.iter().find(|t| t.name == "token_embd.weight")
    }

    /// Absolute file range of a tensor's data (saturating: call `check_data_fits` first for
    /// a range known to be inside the file).
    pub fn tensor_range(&self, t: &TensorInfo) -> std::ops::Range<u64> {
        let start = self.data_offset.saturating_add(t.offset);
        start..start.saturating_add(t.nbytes)
    }
}

fn check_no_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.nbytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let end = pair[0].offset.checked_add(pair[0].nbytes);
        if end.is_none_or(|end| end > pair[1].offset) {
            return Err(GgufError::Overlap {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// When false, array elements are checked and skipped, not copied.
    keep_arrays: bool,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                need: n,
                have: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Rejects a count whose smallest encoding would not fit in the bytes left.
    fn check_count(&self, what: &str, count: u64, min_item_bytes: u64) -> Result<()> {
        let limit = self.left() / min_item_bytes;
        if count > limit {
            return Err(GgufError::TooLarge {
                what: what.to_string(),
                offset: self.pos as u64,
                value: count,
                limit,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<Vec<u8>> {
        Ok(self.skip_string(what)?.to_vec())
    }

    /// A string's bytes, borrowed from the buffer.
    fn skip_string(&mut self, what: &str) -> Result<&'a [u8]> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        if len > MAX_STRING_OR_ARRAY_BYTES {
            return Err(GgufError::TooLarge {
                what: format!("{what} length"),
                offset: at,
                value: len,
                limit: MAX_STRING_OR_ARRAY_BYTES,
            });
        }
        self.take(len, what)
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        if let Some(width) = ty.scalar_width() {
            let s = self.take(width as u64, &format!("value of {key:?}"))?;
            let mut le = [0u8; 8];
            le[..width].copy_from_slice(s);
            return Ok(Value::Scalar { ty, le });
        }
        match ty {
            ValueType::String => Ok(Value::String(self.string(&format!("value of {key:?}"))?)),
            _ => Ok(Value::Array(self.array_value(key, depth)?)),
        }
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<ArrayValue> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(GgufError::NestingTooDeep { key: key.into() });
        }
        let type_at = self.pos as u64;
        let code = self.u32("array element type")?;
        let elem = ValueType::from_code(code).ok_or_else(|| GgufError::BadValueType {
            key: key.into(),
            offset: type_at,
            code,
        })?;
        let count_at = self.pos as u64;
        let count = self.u64("array length")?;
        let min_elem = match elem {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.scalar_width().unwrap_or(1) as u64,
        };
        let too_large = |limit: u64| GgufError::TooLarge {
            what: format!("array length of {key:?}"),
            offset: count_at,
            value: count,
            limit,
        };
        let bytes = count
            .checked_mul(min_elem)
            .ok_or_else(|| too_large(MAX_STRING_OR_ARRAY_BYTES / min_elem))?;
        if bytes > MAX_STRING_OR_ARRAY_BYTES {
            return Err(too_large(MAX_STRING_OR_ARRAY_BYTES / min_elem));
        }
        if bytes > self.left() {
            return Err(too_large(self.left() / min_elem));
        }
        // One message for every element: vocabularies hold 10^5 strings.
        let element = format!("element of {key:?}");
        if !self.keep_arrays {
            for _ in 0..count {
                match elem {
                    ValueType::String => {
                        self.skip_string(&element)?;
                    }
                    ValueType::Array => {
                        self.array_value(key, depth + 1)?;
                    }
                    _ => {}
                }
            }
            if elem.scalar_width().is_some() {
                self.take(bytes, &format!("value of {key:?}"))?;
            }
            return Ok(ArrayValue::Scalars {
                ty: elem,
                le: Vec::new(),
            });
        }
        Ok(match elem {
            ValueType::String => ArrayValue::Strings(
                (0..count)
                    .map(|_| self.string(&element))
                    .collect::<Result<_>>()?,
            ),
            ValueType::Array => ArrayValue::Arrays(
                (0..count)
                    .map(|_| self.array_value(key, depth + 1))
                    .collect::<Result<_>>()?,
            ),
            ty => ArrayValue::Scalars {
                ty,
                le: self.take(bytes, &format!("value of {key:?}"))?.to_vec(),
            },
        })
    }
}
