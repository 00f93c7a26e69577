//! Memory-mapped safetensors checkpoints, single-file or sharded, converted to f32 on demand.

use crate::error::ModelError;
use memmap2::Mmap;
use safetensors::{Dtype, tensor::Metadata};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    mmap: std::sync::Arc<Mmap>,
    data_start: usize,
    meta: Metadata,
}

/// A raw view of one stored tensor.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// On-disk dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [usize],
    /// Little-endian bytes.
    pub bytes: &'a [u8],
}

/// All tensors of a checkpoint directory (`model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`), memory-mapped.
///
/// ```no_run
/// let w = hearth_models::WeightStore::open(std::path::Path::new("model_dir")).unwrap();
/// let (values, shape) = w.f32("model.norm.weight", Some(&[64])).unwrap();
/// assert_eq!(values.len(), shape.iter().product::<usize>());
/// ```
pub struct WeightStore {
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
}

impl WeightStore {
    /// Opens the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
                file: index_path.display().to_string(),
                field: "<json>".into(),
                reason: e.to_string(),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    file: index_path.display().to_string(),
                    field: "weight_map".into(),
                    reason: "missing or not an object".into(),
                })?;
            let mut names: Vec<String> = map.values().filter_map(|x| x.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        Self::open_files(&files)
    }

    /// Opens an explicit list of safetensors files.
    pub fn open_files(files: &[PathBuf]) -> Result<Self, ModelError> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the mapping is read-only; hearth never writes checkpoint files while they
            // are mapped. A concurrent external truncation is the documented hazard of mmap.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let name = path.display().to_string();
            if mmap.len() < 8 {
                return Err(ModelError::Truncated {
                    file: name,
                    expected: 8,
                    actual: mmap.len(),
                });
            }
            let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes")) as usize;
            if header_len > mmap.len().saturating_sub(8) {
                return Err(ModelError::Truncated {
                    file: name,
                    expected: header_len.saturating_add(8),
                    actual: mmap.len(),
                });
            }
            let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap[..]).map_err(|e| {
                // Tell a short file apart from a malformed header.
                let needed = declared_data_end(&mmap[8..8 + header_len]).map(|end| 8 + header_len + end);
                match needed {
                    Some(expected) if expected > mmap.len() => ModelError::Truncated {
                        file: name.clone(),
                        expected,
                        actual: mmap.len(),
                    },
                    _ => ModelError::BadHeader {
                        file: name.clone(),
                        reason: e.to_string(),
                    },
                }
            })?;
            let data_start = 8 + n;
            let data_end = meta.tensors().values().map(|i| i.data_offsets.1).max().unwrap_or(0);
            if data_start + data_end > mmap.len() {
                return Err(ModelError::Truncated {
                    file: name,
                    expected: data_start + data_end,
                    actual: mmap.len(),
                });
            }
            for tname in meta.tensors().keys() {
                index.insert(tname.clone(), shards.len());
            }
            shards.push(Shard {
                path: path.clone(),
                mmap: std::sync::Arc::new(mmap),
                data_start,
                meta,
            });
        }
        Ok(WeightStore { shards, index })
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    fn files(&self) -> String {
        self.shards
            .iter()
            .map(|s| s.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The raw bytes, dtype and shape of a tensor.
    pub fn raw(&self, name: &str) -> Result<(RawTensor<'_>, &Path), ModelError> {
        let &si = self.index.get(name).ok_or_else(|| ModelError::MissingTensor {
            tensor: name.into(),
            files: self.files(),
        })?;
        let shard = &self.shards[si];
        let info = shard.meta.info(name).expect("indexed tensor has info");
        let (a, b) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + a..shard.data_start + b];
        Ok((
            RawTensor {
                dtype: info.dtype,
                shape: &info.shape,
                bytes,
            },
            &shard.path,
        ))
    }

    /// A tensor converted to f32, with its shape checked against `expected` when given.
    pub fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let (raw, path) = self.raw(name)?;
        if let Some(exp) = expected
            && exp != raw.shape
        {
            return Err(ModelError::Shape {
                file: path.display().to_string(),
                tensor: name.into(),
                expected: exp.to_vec(),
                actual: raw.shape.to_vec(),
            });
        }
        let values = to_f32(raw.dtype, raw.bytes).ok_or_else(|| ModelError::Dtype {
            file: path.display().to_string(),
            tensor: name.into(),
            dtype: format!("{:?}", raw.dtype),
        })?;
        Ok((values, raw.shape.to_vec()))
    }
}

/// The largest `data_offsets` end a header declares, if the header is valid JSON.
fn declared_data_end(header: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .map(|x| x as usize)
}

/// Anything that can hand out checkpoint tensors by their HuggingFace name, as f32.
///
/// [`WeightStore`] reads safetensors; other formats (GGUF) implement the same trait and the
/// model code does not change.
pub trait TensorSource {
    /// Whether a tensor exists.
    fn contains(&self, name: &str) -> bool;
    /// A tensor converted to f32, with its shape checked against `expected` when given
    /// (shapes in HF order: `[out, in]` for linear weights).
    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError>;

    /// The `[rows, cols]` matrix `name` as packed rows the CPU kernels compute on directly
    /// (GGUF Q4_0/Q8_0/Q4_K/..., bf16), when the source stores it that way. `Ok(None)` means
    /// "use [`TensorSource::f32`]".
    fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<PackedTensor>, ModelError> {
        let _ = (name, rows, cols);
        Ok(None)
    }
}

/// A matrix in a kernel format: `rows` rows of `cols` weights, row-major, packed.
#[derive(Debug, Clone)]
pub struct PackedTensor {
    /// Block format of the rows.
    pub format: hearth_quant::kernels::WeightFormat,
    /// The packed rows (borrowed from the checkpoint's memory map where possible).
    pub bytes: hearth_quant::WeightBytes,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
}

impl TensorSource for WeightStore {
    fn contains(&self, name: &str) -> bool {
        WeightStore::contains(self, name)
    }
    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        WeightStore::f32(self, name, expected)
    }

    /// f32/f16/bf16 matrices are handed out in place, borrowed from the memory map.
    fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<PackedTensor>, ModelError> {
        use hearth_quant::kernels::WeightFormat;
        let Some(&si) = self.index.get(name) else {
            return Ok(None);
        };
        let shard = &self.shards[si];
        let info = shard.meta.info(name).expect("indexed tensor has info");
        let format = match info.dtype {
            Dtype::F32 => WeightFormat::F32,
            Dtype::F16 => WeightFormat::F16,
            Dtype::BF16 => WeightFormat::Bf16,
            _ => return Ok(None),
        };
        if info.shape != [rows, cols] {
            return Ok(None); // shape errors are reported by the f32 path
        }
        let (a, b) = info.data_offsets;
        let start = shard.data_start + a;
        if b - a != rows * cols * info.dtype.bitsize() / 8 {
            return Ok(None);
        }
        Ok(
            hearth_quant::WeightBytes::mapped(shard.mmap.clone(), start, b - a).map(|bytes| PackedTensor {
                format,
                bytes,
                rows,
                cols,
            }),
        )
    }
}

/// Converts little-endian f32/f16/bf16 bytes to f32; `None` for other dtypes.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        _ => return None,
    })
}
