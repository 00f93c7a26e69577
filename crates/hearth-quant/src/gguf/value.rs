//! GGUF metadata values.

use std::fmt;

/// The type tag of a GGUF metadata value.
///
/// ```
/// use hearth_quant::gguf::ValueType;
/// assert_eq!(ValueType::from_id(8), Some(ValueType::String));
/// assert_eq!(ValueType::String.id(), 8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// u8
    U8 = 0,
    /// i8
    I8 = 1,
    /// u16
    U16 = 2,
    /// i16
    I16 = 3,
    /// u32
    U32 = 4,
    /// i32
    I32 = 5,
    /// f32
    F32 = 6,
    /// bool (one byte, 0 or 1)
    Bool = 7,
    /// UTF-8 string with u64 length prefix
    String = 8,
    /// typed array: u32 element type, u64 count, elements
    Array = 9,
    /// u64
    U64 = 10,
    /// i64
    I64 = 11,
    /// f64
    F64 = 12,
}

impl ValueType {
    /// The type for a GGUF value type id.
    ///
    /// ```
    /// assert!(hearth_quant::gguf::ValueType::from_id(13).is_none());
    /// ```
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
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

    /// The GGUF id.
    ///
    /// ```
    /// assert_eq!(hearth_quant::gguf::ValueType::F64.id(), 12);
    /// ```
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The fewest bytes one value of this type takes in a file (a string is at least its
    /// 8-byte length, an array at least its 12-byte type and count).
    ///
    /// ```
    /// assert_eq!(hearth_quant::gguf::ValueType::String.min_encoded_size(), 8);
    /// ```
    pub fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
///
/// ```
/// use hearth_quant::gguf::{MetadataValue, MetadataArray};
/// let v = MetadataValue::from("llama");
/// assert_eq!(v.as_str(), Some("llama"));
/// let a = MetadataValue::Array(MetadataArray::U32(vec![1, 2]));
/// assert_eq!(a.as_array().map(|a| a.len()), Some(2));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    String(String),
    /// array
    Array(MetadataArray),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

/// A typed metadata array. Nested arrays hold arrays of any element type.
///
/// ```
/// use hearth_quant::gguf::{MetadataArray, ValueType};
/// let a = MetadataArray::String(vec!["a".into(), "b".into()]);
/// assert_eq!(a.element_type(), ValueType::String);
/// assert_eq!(a.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    /// u8 elements
    U8(Vec<u8>),
    /// i8 elements
    I8(Vec<i8>),
    /// u16 elements
    U16(Vec<u16>),
    /// i16 elements
    I16(Vec<i16>),
    /// u32 elements
    U32(Vec<u32>),
    /// i32 elements
    I32(Vec<i32>),
    /// f32 elements
    F32(Vec<f32>),
    /// bool elements
    Bool(Vec<bool>),
    /// string elements
    String(Vec<String>),
    /// array elements (each with its own element type)
    Array(Vec<MetadataArray>),
    /// u64 elements
    U64(Vec<u64>),
    /// i64 elements
    I64(Vec<i64>),
    /// f64 elements
    F64(Vec<f64>),
}

impl MetadataArray {
    /// The element type.
    ///
    /// ```
    /// use hearth_quant::gguf::{MetadataArray, ValueType};
    /// assert_eq!(MetadataArray::F32(vec![]).element_type(), ValueType::F32);
    /// ```
    pub fn element_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    ///
    /// ```
    /// assert_eq!(hearth_quant::gguf::MetadataArray::Bool(vec![true]).len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::Array(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether the array is empty.
    ///
    /// ```
    /// assert!(hearth_quant::gguf::MetadataArray::U8(vec![]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MetadataValue {
    /// The value's type tag.
    ///
    /// ```
    /// use hearth_quant::gguf::{MetadataValue, ValueType};
    /// assert_eq!(MetadataValue::U64(1).value_type(), ValueType::U64);
    /// ```
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// The string, if this is a string value.
    ///
    /// ```
    /// assert_eq!(hearth_quant::gguf::MetadataValue::U8(1).as_str(), None);
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is an array value.
    ///
    /// ```
    /// assert!(hearth_quant::gguf::MetadataValue::Bool(true).as_array().is_none());
    /// ```
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Any integer value (of any width or signedness) that fits in u64.
    ///
    /// ```
    /// use hearth_quant::gguf::MetadataValue;
    /// assert_eq!(MetadataValue::I32(7).as_u64(), Some(7));
    /// assert_eq!(MetadataValue::I32(-7).as_u64(), None);
    /// ```
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float value as f64.
    ///
    /// ```
    /// assert_eq!(hearth_quant::gguf::MetadataValue::F32(0.5).as_f64(), Some(0.5));
    /// ```
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The bool, if this is a bool value.
    ///
    /// ```
    /// assert_eq!(hearth_quant::gguf::MetadataValue::Bool(true).as_bool(), Some(true));
    /// ```
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl From<&str> for MetadataValue {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl From<String> for MetadataValue {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}

impl From<MetadataArray> for MetadataValue {
    fn from(a: MetadataArray) -> Self {
        Self::Array(a)
    }
}

macro_rules! from_scalar {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for MetadataValue {
            fn from(x: $t) -> Self {
                Self::$v(x)
            }
        }
    )*};
}
from_scalar!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, u64 => U64, i64 => I64, f64 => F64);

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
