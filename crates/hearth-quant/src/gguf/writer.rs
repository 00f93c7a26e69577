//! GGUF v3 writer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use super::error::GgufError;
use super::reader::tensor_size;
use super::value::{MetadataArray, MetadataValue};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::types::GgmlType;

struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Cow<'a, [u8]>,
}

/// Builds a little-endian GGUF v3 file: metadata, tensor infos, then tensor data, each
/// tensor padded to the alignment (32, or `general.alignment` if that key is added).
///
/// ```
/// use hearth_quant::{GgmlType, quantize_to_vec, gguf::{GgufFile, GgufWriter}};
/// let weights: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama").unwrap();
/// w.add_tensor("w", GgmlType::Q8_0, &[32, 2], quantize_to_vec(GgmlType::Q8_0, &weights).unwrap()).unwrap();
/// let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// assert_eq!(file.tensor("w").unwrap().info.dims, vec![32, 2]);
/// ```
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, MetadataValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    alignment: Option<u64>,
}

impl<'a> GgufWriter<'a> {
    /// An empty writer.
    ///
    /// ```
    /// let bytes = hearth_quant::gguf::GgufWriter::new().to_bytes().unwrap();
    /// assert_eq!(bytes.len(), 32); // magic, version, two counts, padding to the alignment
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key/value. Adding `general.alignment` (a power-of-two `u32`) sets
    /// the data alignment.
    ///
    /// ```
    /// use hearth_quant::gguf::{GgufWriter, MetadataArray};
    /// let mut w = GgufWriter::new();
    /// w.add_metadata("tokenizer.ggml.tokens", MetadataArray::String(vec!["<s>".into()])).unwrap();
    /// assert!(w.add_metadata("tokenizer.ggml.tokens", 1u32).is_err()); // duplicate
    /// assert!(w.add_metadata("general.alignment", 3u32).is_err()); // not a power of two
    /// ```
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<MetadataValue>) -> Result<(), GgufError> {
        let (key, value) = (key.into(), value.into());
        if key == "general.alignment" {
            match value {
                MetadataValue::U32(a) if a != 0 && a.is_power_of_two() => self.alignment = Some(a.into()),
                ref v => return Err(GgufError::InvalidAlignment(format!("{v:?}"))),
            }
        }
        if !self.keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Adds a tensor. `dims` is in GGUF order (`dims[0]` innermost); `data` must be exactly
    /// the bytes its type and shape need.
    ///
    /// ```
    /// use hearth_quant::{GgmlType, gguf::GgufWriter};
    /// let mut w = GgufWriter::new();
    /// w.add_tensor("b", GgmlType::F32, &[4], vec![0u8; 16]).unwrap();
    /// assert!(w.add_tensor("c", GgmlType::F32, &[4], vec![0u8; 15]).is_err());
    /// assert!(w.add_tensor("d", GgmlType::Q4_0, &[16], vec![0u8; 9]).is_err()); // not whole blocks
    /// ```
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<(), GgufError> {
        let (name, data) = (name.into(), data.into());
        if dims.len() > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n_dims: dims.len() as u32,
            });
        }
        let expected = tensor_size(&name, dims, ty)?;
        if data.len() as u64 != expected {
            return Err(GgufError::DataLength {
                tensor: name,
                expected,
                got: data.len() as u64,
            });
        }
        if !self.names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor(name));
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims: dims.to_vec(),
            data,
        });
        Ok(())
    }

    /// Writes the file to `w`, returning the number of bytes written.
    ///
    /// ```
    /// let mut out = Vec::new();
    /// let n = hearth_quant::gguf::GgufWriter::new().write_to(&mut out).unwrap();
    /// assert_eq!(n as usize, out.len());
    /// ```
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64, GgufError> {
        let align = self.alignment.unwrap_or(DEFAULT_ALIGNMENT);
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset += pad_to(t.data.len() as u64, align);
        }
        let head_len = head.len() as u64;
        head.resize(pad_to(head_len, align) as usize, 0);
        w.write_all(&head)?;
        let mut written = head.len() as u64;
        let zeros = vec![0u8; align as usize];
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let padding = pad_to(t.data.len() as u64, align) - t.data.len() as u64;
            w.write_all(&zeros[..padding as usize])?;
            written += t.data.len() as u64 + padding;
        }
        Ok(written)
    }

    /// Writes the file to `path` (buffered).
    ///
    /// ```no_run
    /// hearth_quant::gguf::GgufWriter::new().write_file("out.gguf").unwrap();
    /// ```
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<u64, GgufError> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let n = self.write_to(&mut f)?;
        f.flush()?;
        Ok(n)
    }

    /// The file as bytes.
    ///
    /// ```
    /// let b = hearth_quant::gguf::GgufWriter::new().to_bytes().unwrap();
    /// assert_eq!(&b[..4], b"GGUF");
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }
}

fn pad_to(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetadataValue) {
    use MetadataValue as V;
    match v {
        V::U8(x) => out.push(*x),
        V::I8(x) => out.push(*x as u8),
        V::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => out.push(*x as u8),
        V::String(s) => put_str(out, s),
        V::Array(a) => put_array(out, a),
        V::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &MetadataArray) {
    use MetadataArray as A;
    out.extend_from_slice(&a.element_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            $v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match a {
        A::U8(v) => out.extend_from_slice(v),
        A::I8(v) => le!(v),
        A::U16(v) => le!(v),
        A::I16(v) => le!(v),
        A::U32(v) => le!(v),
        A::I32(v) => le!(v),
        A::F32(v) => le!(v),
        A::Bool(v) => v.iter().for_each(|&b| out.push(b as u8)),
        A::String(v) => v.iter().for_each(|s| put_str(out, s)),
        A::Array(v) => v.iter().for_each(|x| put_array(out, x)),
        A::U64(v) => le!(v),
        A::I64(v) => le!(v),
        A::F64(v) => le!(v),
    }
}
