//! GGUF reader: header, metadata, tensor infos, with bounds checks on everything.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::error::GgufError;
use super::value::{MetadataArray, MetadataValue, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::types::GgmlType;

/// Where one tensor lives in a GGUF file.
///
/// ```
/// use hearth_quant::{GgmlType, gguf::TensorInfo};
/// let t = TensorInfo { name: "w".into(), dims: vec![64, 3], ty: GgmlType::Q8_0, offset: 0, size: 204 };
/// assert_eq!(t.n_elements(), 192);
/// assert_eq!(t.shape_row_major(), vec![3, 64]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Dimensions in GGUF/ggml order: `dims[0]` (ne\[0\]) is the innermost, contiguous one.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Total element count (1 for zero dimensions).
    ///
    /// ```
    /// # use hearth_quant::{GgmlType, gguf::TensorInfo};
    /// let t = TensorInfo { name: "b".into(), dims: vec![8], ty: GgmlType::F32, offset: 0, size: 32 };
    /// assert_eq!(t.n_elements(), 8);
    /// ```
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Dimensions outermost first (the PyTorch/NumPy order), i.e. `dims` reversed.
    ///
    /// ```
    /// # use hearth_quant::{GgmlType, gguf::TensorInfo};
    /// let t = TensorInfo { name: "w".into(), dims: vec![4, 2, 3], ty: GgmlType::F32, offset: 0, size: 96 };
    /// assert_eq!(t.shape_row_major(), vec![3, 2, 4]);
    /// ```
    pub fn shape_row_major(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// The parsed, validated structure of a GGUF file (everything but the tensor bytes).
///
/// ```
/// use hearth_quant::gguf::{GgufInfo, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.name", "tiny").unwrap();
/// let bytes = w.to_bytes().unwrap();
/// let info = GgufInfo::parse(&bytes).unwrap();
/// assert_eq!(info.version, 3);
/// assert_eq!(info.get("general.name").and_then(|v| v.as_str()), Some("tiny"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs in file order.
    pub metadata: Vec<(String, MetadataValue)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    tensor_index: HashMap<String, usize>,
}

impl GgufInfo {
    /// Parses and validates a whole GGUF file held in memory. Every count, length, offset
    /// and size is checked against the bytes available; tensor data must lie inside
    /// `bytes`, be aligned and not overlap.
    ///
    /// ```
    /// use hearth_quant::gguf::{GgufError, GgufInfo};
    /// assert!(matches!(GgufInfo::parse(b"GGUF"), Err(GgufError::Truncated { .. })));
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        let mut c = Cursor { b: bytes, pos: 0 };
        let magic = c.take(4, &|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic([magic[0], magic[1], magic[2], magic[3]]));
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64(&|| "tensor_count".into())?;
        let n_kv = c.u64(&|| "metadata_kv_count".into())?;
        // a kv is at least key length (8) + value type (4) + 1 byte of value
        c.check_count(n_kv, 13, &|| "metadata_kv_count".into())?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut seen = HashSet::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("kv[{i}] key"))?;
            let field = |what: &str| format!("kv[{i}] {key:?} {what}");
            let ty_id = c.u32(&|| field("value type"))?;
            let ty = ValueType::from_id(ty_id).ok_or_else(|| GgufError::InvalidValueType {
                field: field("value type"),
                id: ty_id,
            })?;
            let value = c.value(ty, 0, &|| field("value"))?;
            if !seen.insert(key.clone()) {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, MetadataValue::U32(a))) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => return Err(GgufError::InvalidAlignment(format!("{v:?}"))),
        };

        // a tensor info is at least name length (8) + n_dims (4) + type (4) + offset (8)
        c.check_count(n_tensors, 24, &|| "tensor_count".into())?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor[{i}] name"))?;
            let field = |what: &str| format!("tensor[{i}] {name:?} {what}");
            let n_dims = c.u32(&|| field("n_dims"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(GgufError::TooManyDims { tensor: name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&|| field(&format!("dims[{d}]")))?);
            }
            let ty_id = c.u32(&|| field("type"))?;
            let offset = c.u64(&|| field("offset"))?;
            raw.push((name, dims, ty_id, offset));
        }

        let data_offset = align_up(c.pos as u64, alignment)
            .ok_or_else(|| GgufError::InvalidAlignment("data section offset overflows".into()))?;
        let data_len = (bytes.len() as u64).saturating_sub(data_offset);

        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, dims, ty_id, offset) in raw {
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnknownType {
                tensor: name.clone(),
                id: ty_id,
            })?;
            let size = tensor_size(&name, &dims, ty)?;
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::MisalignedTensor {
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            if offset.checked_add(size).is_none_or(|end| end > data_len) {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: name,
                    offset,
                    size,
                    data_len,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }

        let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            if pair[0].offset + pair[0].size > pair[1].offset {
                return Err(GgufError::TensorOverlap {
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }

        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            tensor_index,
        })
    }

    /// The metadata value for `key`.
    ///
    /// ```
    /// # use hearth_quant::gguf::{GgufInfo, GgufWriter};
    /// let mut w = GgufWriter::new();
    /// w.add_metadata("llama.block_count", 2u32).unwrap();
    /// let info = GgufInfo::parse(&w.to_bytes().unwrap()).unwrap();
    /// assert_eq!(info.get("llama.block_count").and_then(|v| v.as_u64()), Some(2));
    /// assert!(info.get("missing").is_none());
    /// ```
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor info named `name`.
    ///
    /// ```
    /// # use hearth_quant::{GgmlType, gguf::{GgufInfo, GgufWriter}};
    /// let mut w = GgufWriter::new();
    /// w.add_tensor("t", GgmlType::F32, &[2], vec![0u8; 8]).unwrap();
    /// let info = GgufInfo::parse(&w.to_bytes().unwrap()).unwrap();
    /// assert_eq!(info.tensor("t").unwrap().dims, vec![2]);
    /// ```
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

/// Bytes of a tensor of type `ty` and dims `dims`, validating the shape.
pub(super) fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |reason| GgufError::InvalidShape {
        tensor: name.to_owned(),
        dims: dims.to_vec(),
        ty,
        reason,
    };
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| bad("element count overflows"))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(ty.block_size() as u64) {
        return Err(bad("ne[0] is not a multiple of the block size"));
    }
    let rows = n.checked_div(ne0).unwrap_or(0);
    ty.row_bytes(ne0)
        .and_then(|r| r.checked_mul(rows))
        .ok_or_else(|| bad("byte size overflows"))
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

type Field<'f> = &'f dyn Fn() -> String;

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: Field) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field(),
                offset: self.pos as u64,
                needed: n,
                len: self.b.len() as u64,
            });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: Field) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: Field) -> Result<u32, GgufError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: Field) -> Result<u64, GgufError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// Errors unless `count` items of at least `min_size` bytes each fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, field: Field) -> Result<(), GgufError> {
        let remaining = self.remaining();
        if count.checked_mul(min_size).is_none_or(|need| need > remaining) {
            return Err(GgufError::CountTooLarge {
                field: field(),
                count,
                remaining,
            });
        }
        Ok(())
    }

    fn string(&mut self, field: Field) -> Result<String, GgufError> {
        let len = self.u64(field)?;
        self.check_count(len, 1, field)?;
        let s = self.take(len, field)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| GgufError::InvalidUtf8 { field: field() })
    }

    fn bool(&mut self, field: Field) -> Result<bool, GgufError> {
        match self.array::<1>(field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::InvalidBool { field: field(), value }),
        }
    }

    fn value(&mut self, ty: ValueType, depth: usize, field: Field) -> Result<MetadataValue, GgufError> {
        use MetadataValue as V;
        Ok(match ty {
            ValueType::U8 => V::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => V::I8(self.array::<1>(field)?[0] as i8),
            ValueType::U16 => V::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => V::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => V::U32(u32::from_le_bytes(self.array(field)?)),
            ValueType::I32 => V::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => V::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::Bool => V::Bool(self.bool(field)?),
            ValueType::String => V::String(self.string(field)?),
            ValueType::Array => V::Array(self.metadata_array(depth + 1, field)?),
            ValueType::U64 => V::U64(u64::from_le_bytes(self.array(field)?)),
            ValueType::I64 => V::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => V::F64(f64::from_le_bytes(self.array(field)?)),
        })
    }

    fn metadata_array(&mut self, depth: usize, field: Field) -> Result<MetadataArray, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                field: field(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let ty_id = self.u32(field)?;
        let ty = ValueType::from_id(ty_id).ok_or_else(|| GgufError::InvalidValueType {
            field: field(),
            id: ty_id,
        })?;
        let n = self.u64(field)?;
        self.check_count(n, ty.min_encoded_size(), field)?;
        // `n * min_encoded_size <= remaining`, so these allocations are bounded by the file.
        let n_us = n as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let raw = self.take(n * std::mem::size_of::<$t>() as u64, field)?;
                MetadataArray::$variant(
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => MetadataArray::U8(self.take(n, field)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n_us);
                for _ in 0..n {
                    v.push(self.bool(field)?);
                }
                MetadataArray::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n_us);
                for _ in 0..n {
                    v.push(self.string(field)?);
                }
                MetadataArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n_us);
                for _ in 0..n {
                    v.push(self.metadata_array(depth + 1, field)?);
                }
                MetadataArray::Array(v)
            }
        })
    }
}

enum Backing {
    Mmap(std::sync::Arc<memmap2::Mmap>),
    Owned(Vec<u8>),
}

/// A GGUF file: validated structure plus access to each tensor's raw bytes.
///
/// ```
/// use hearth_quant::{GgmlType, gguf::{GgufFile, GgufWriter}};
/// let mut w = GgufWriter::new();
/// w.add_tensor("x", GgmlType::F32, &[2], [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
/// let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// let t = file.tensor("x").unwrap();
/// assert_eq!(t.info.ty, GgmlType::F32);
/// assert_eq!(t.dequantize().unwrap(), vec![1.0, 2.0]);
/// ```
pub struct GgufFile {
    info: GgufInfo,
    data: Backing,
}

/// One tensor of a [`GgufFile`]: its info and its raw (possibly quantized) bytes.
///
/// ```
/// # use hearth_quant::{GgmlType, gguf::{GgufFile, GgufWriter}};
/// # let mut w = GgufWriter::new();
/// # w.add_tensor("x", GgmlType::F16, &[1], vec![0u8, 0x3c]).unwrap();
/// # let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// let t = file.tensor("x").unwrap();
/// assert_eq!(t.data, &[0u8, 0x3c]);
/// assert_eq!(t.dequantize().unwrap(), vec![1.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Name, type, dims, offset, size.
    pub info: &'a TensorInfo,
    /// The tensor's bytes (`info.size` of them).
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Dequantizes (or converts) the tensor to f32, in memory order.
    ///
    /// ```
    /// # use hearth_quant::{GgmlType, gguf::{GgufFile, GgufWriter}};
    /// # let mut w = GgufWriter::new();
    /// # w.add_tensor("x", GgmlType::BF16, &[1], vec![0x80u8, 0x3f]).unwrap();
    /// # let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    /// assert_eq!(file.tensor("x").unwrap().dequantize().unwrap(), vec![1.0]);
    /// ```
    pub fn dequantize(&self) -> Result<Vec<f32>, GgufError> {
        crate::dequantize_to_vec(self.info.ty, self.data).map_err(|source| GgufError::Quant {
            tensor: self.info.name.clone(),
            source,
        })
    }
}

impl GgufFile {
    /// Opens and memory-maps a GGUF file, then validates it.
    ///
    /// ```no_run
    /// let f = hearth_quant::gguf::GgufFile::open("model.gguf").unwrap();
    /// println!("{} tensors", f.info().tensors.len());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only and private to this value. Memory-mapping is only
        // unsound if another process truncates or rewrites the file while it is mapped;
        // like every mmap-based model loader we require model files not to be modified
        // while open. All accesses are bounds-checked slices of the mapping.
        let mmap = unsafe { memmap2::Mmap::map(&file)? };
        let info = GgufInfo::parse(&mmap)?;
        Ok(Self {
            info,
            data: Backing::Mmap(std::sync::Arc::new(mmap)),
        })
    }

    /// Validates a GGUF file held in memory.
    ///
    /// ```
    /// assert!(hearth_quant::gguf::GgufFile::from_bytes(vec![0; 16]).is_err());
    /// ```
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let info = GgufInfo::parse(&bytes)?;
        Ok(Self {
            info,
            data: Backing::Owned(bytes),
        })
    }

    /// The parsed structure.
    ///
    /// ```
    /// # use hearth_quant::gguf::{GgufFile, GgufWriter};
    /// let f = GgufFile::from_bytes(GgufWriter::new().to_bytes().unwrap()).unwrap();
    /// assert_eq!(f.info().alignment, 32);
    /// ```
    pub fn info(&self) -> &GgufInfo {
        &self.info
    }

    /// The metadata value for `key`.
    ///
    /// ```
    /// # use hearth_quant::gguf::{GgufFile, GgufWriter};
    /// let mut w = GgufWriter::new();
    /// w.add_metadata("general.architecture", "llama").unwrap();
    /// let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    /// assert_eq!(f.get("general.architecture").unwrap().as_str(), Some("llama"));
    /// ```
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.info.get(key)
    }

    /// The whole file.
    ///
    /// ```
    /// # use hearth_quant::gguf::{GgufFile, GgufWriter};
    /// let f = GgufFile::from_bytes(GgufWriter::new().to_bytes().unwrap()).unwrap();
    /// assert_eq!(&f.as_bytes()[..4], b"GGUF");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        match &self.data {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// `slice` (a part of this file's bytes, e.g. a tensor's data) as [`crate::WeightBytes`]:
    /// borrowed from the memory map when the file is mapped, else copied.
    ///
    /// ```
    /// # use hearth_quant::gguf::{GgufFile, GgufWriter};
    /// let f = GgufFile::from_bytes(GgufWriter::new().to_bytes().unwrap()).unwrap();
    /// let b = f.share(&f.as_bytes()[..4]);
    /// assert_eq!(&b[..], b"GGUF");
    /// ```
    pub fn share(&self, slice: &[u8]) -> crate::WeightBytes {
        if let Backing::Mmap(m) = &self.data {
            let base = m.as_ptr() as usize;
            let p = slice.as_ptr() as usize;
            if p >= base
                && let Some(b) = crate::WeightBytes::mapped(m.clone(), p - base, slice.len())
            {
                return b;
            }
        }
        crate::WeightBytes::Owned(slice.to_vec())
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        // in bounds: checked by GgufInfo::parse against this very buffer
        if info.size == 0 {
            return TensorView { info, data: &[] };
        }
        let start = (self.info.data_offset + info.offset) as usize;
        TensorView {
            info,
            data: &self.as_bytes()[start..start + info.size as usize],
        }
    }

    /// The tensor named `name`.
    ///
    /// ```
    /// # use hearth_quant::gguf::{GgufFile, GgufWriter};
    /// let f = GgufFile::from_bytes(GgufWriter::new().to_bytes().unwrap()).unwrap();
    /// assert!(f.tensor("nope").is_none());
    /// ```
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.info.tensor(name).map(|t| self.view(t))
    }

    /// All tensors in file order.
    ///
    /// ```
    /// # use hearth_quant::{GgmlType, gguf::{GgufFile, GgufWriter}};
    /// let mut w = GgufWriter::new();
    /// w.add_tensor("a", GgmlType::I8, &[3], vec![1u8, 2, 3]).unwrap();
    /// let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    /// assert_eq!(f.tensors().map(|t| t.info.name.as_str()).collect::<Vec<_>>(), ["a"]);
    /// ```
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.info.tensors.iter().map(|t| self.view(t))
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
