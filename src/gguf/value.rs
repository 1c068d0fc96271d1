//! GGUF metadata values, kept in a form that re-serializes to the exact bytes they came from.

use std::fmt;

/// The on-disk GGUF metadata value type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_code(code: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match code {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Fixed byte width of a scalar type; `None` for strings and arrays.
    pub fn scalar_width(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// One metadata value. Scalars keep their exact bits (a bool byte of 2 stays 2) so that
/// writing a parsed header gives back identical bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar as its little-endian bytes (1, 2, 4 or 8 of them).
    Scalar {
        ty: ValueType,
        le: [u8; 8],
    },
    /// GGUF strings are length-prefixed bytes, not guaranteed UTF-8.
    String(Vec<u8>),
    Array(ArrayValue),
}

/// A GGUF array: scalars packed as their little-endian bytes, strings, or nested arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayValue {
    Scalars { ty: ValueType, le: Vec<u8> },
    Strings(Vec<Vec<u8>>),
    Arrays(Vec<ArrayValue>),
}

impl ArrayValue {
    pub fn elem_type(&self) -> ValueType {
        match self {
            ArrayValue::Scalars { ty, .. } => *ty,
            ArrayValue::Strings(_) => ValueType::String,
            ArrayValue::Arrays(_) => ValueType::Array,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ArrayValue::Scalars { ty, le } => le.len() / ty.scalar_width().unwrap_or(1),
            ArrayValue::Strings(s) => s.len(),
            ArrayValue::Arrays(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Scalar { ty, .. } => *ty,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
        }
    }

    pub fn u32(v: u32) -> Value {
        Self::scalar(ValueType::U32, &v.to_le_bytes())
    }

    pub fn u64(v: u64) -> Value {
        Self::scalar(ValueType::U64, &v.to_le_bytes())
    }

    pub fn f32(v: f32) -> Value {
        Self::scalar(ValueType::F32, &v.to_le_bytes())
    }

    pub fn bool(v: bool) -> Value {
        Self::scalar(ValueType::Bool, &[u8::from(v)])
    }

    pub fn string(s: &str) -> Value {
        Value::String(s.as_bytes().to_vec())
    }

    fn scalar(ty: ValueType, bytes: &[u8]) -> Value {
        let mut le = [0u8; 8];
        le[..bytes.len()].copy_from_slice(bytes);
        Value::Scalar { ty, le }
    }

    /// The value as an unsigned integer when it is a non-negative integer scalar.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Scalar { ty, le } => {
                let w = ty.scalar_width()?;
                let raw = u64::from_le_bytes(*le);
                match ty {
                    ValueType::U8 | ValueType::U16 | ValueType::U32 | ValueType::U64 => Some(raw),
                    ValueType::I8 | ValueType::I16 | ValueType::I32 | ValueType::I64 => {
                        let shift = 64 - 8 * w as u32;
                        let signed = ((raw << shift) as i64) >> shift;
                        u64::try_from(signed).ok()
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }

    /// The value when it is a bool scalar.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Scalar {
                ty: ValueType::Bool,
                le,
            } => Some(le[0] != 0),
            _ => None,
        }
    }
}

/// A scalar's value as JSON from its little-endian bytes: integers exactly, floats widened to
/// f64 (exact), NaN and infinities as null (JSON has no such numbers), bools as bools.
fn scalar_json(ty: ValueType, le: &[u8]) -> serde_json::Value {
    let mut b = [0u8; 8];
    b[..le.len()].copy_from_slice(le);
    let raw = u64::from_le_bytes(b);
    let signed = |bits: u32| ((raw << (64 - bits)) as i64) >> (64 - bits);
    match ty {
        ValueType::U8 | ValueType::U16 | ValueType::U32 | ValueType::U64 => raw.into(),
        ValueType::I8 => signed(8).into(),
        ValueType::I16 => signed(16).into(),
        ValueType::I32 => signed(32).into(),
        ValueType::I64 => (raw as i64).into(),
        ValueType::F32 => f64::from(f32::from_bits(raw as u32)).into(),
        ValueType::F64 => f64::from_bits(raw).into(),
        ValueType::Bool => (b[0] != 0).into(),
        ValueType::String | ValueType::Array => serde_json::Value::Null,
    }
}

impl ArrayValue {
    /// The array as a JSON list (see [`Value::to_json`]).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ArrayValue::Scalars { ty, le } => {
                let w = ty.scalar_width().unwrap_or(1);
                le.chunks_exact(w).map(|e| scalar_json(*ty, e)).collect()
            }
            ArrayValue::Strings(s) => s
                .iter()
                .map(|s| serde_json::Value::from(String::from_utf8_lossy(s)))
                .collect(),
            ArrayValue::Arrays(a) => a.iter().map(ArrayValue::to_json).collect(),
        }
    }
}

impl Value {
    /// The value as JSON, for readers in other languages (the C API's
    /// `dcgguf_metadata_json`): integers exactly, floats as f64 (NaN and infinities as
    /// null), strings decoded as UTF-8 (invalid bytes become U+FFFD), arrays as lists.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Scalar { ty, le } => scalar_json(*ty, &le[..ty.scalar_width().unwrap_or(8)]),
            Value::String(s) => String::from_utf8_lossy(s).into(),
            Value::Array(a) => a.to_json(),
        }
    }
}

impl ValueType {
    /// The type's name as ggml's gguf.cpp spells it (`GGUF_TYPE_NAME`: "u8", "i32", "f32",
    /// "bool", "str", "arr", ...).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "str",
            Array => "arr",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Scalar { ty, le } => match ty {
                ValueType::F32 => write!(f, "{}", f32::from_le_bytes(le[..4].try_into().unwrap())),
                ValueType::F64 => write!(f, "{}", f64::from_le_bytes(*le)),
                ValueType::Bool => write!(f, "{}", le[0] != 0),
                _ => match self.as_u64() {
                    Some(v) => write!(f, "{v}"),
                    None => {
                        let w = ty.scalar_width().unwrap_or(8) as u32;
                        let shift = 64 - 8 * w;
                        write!(
                            f,
                            "{}",
                            ((u64::from_le_bytes(*le) << shift) as i64) >> shift
                        )
                    }
                },
            },
            Value::String(s) => write!(f, "{:?}", String::from_utf8_lossy(s)),
            Value::Array(a) => write!(f, "[{:?}; {}]", a.elem_type(), a.len()),
        }
    }
}

/// A metadata key and its value. Keys are bytes because GGUF does not promise UTF-8.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Value,
}

impl KeyValue {
    pub fn new(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value,
        }
    }

    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}
