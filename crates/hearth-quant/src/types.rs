//! The ggml tensor element types, with their GGUF ids and block geometry.

use std::fmt;

/// A ggml tensor element type, as stored in the `type` field of a GGUF tensor info.
///
/// The discriminants are the GGUF / ggml type ids. Every type is laid out in blocks of
/// [`block_size`](GgmlType::block_size) elements taking [`type_size`](GgmlType::type_size) bytes.
///
/// ```
/// use hearth_quant::GgmlType;
/// let t = GgmlType::from_id(12).unwrap();
/// assert_eq!(t, GgmlType::Q4_K);
/// assert_eq!((t.block_size(), t.type_size()), (256, 144));
/// assert_eq!(t.row_bytes(512), Some(288));
/// ```
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE float.
    F16 = 1,
    /// 4-bit, one f16 scale per 32 elements.
    Q4_0 = 2,
    /// 4-bit, f16 scale and min per 32 elements.
    Q4_1 = 3,
    /// 5-bit, one f16 scale per 32 elements.
    Q5_0 = 6,
    /// 5-bit, f16 scale and min per 32 elements.
    Q5_1 = 7,
    /// 8-bit, one f16 scale per 32 elements.
    Q8_0 = 8,
    /// 8-bit with f16 scale and f16 sum per 32 elements (activations).
    Q8_1 = 9,
    /// 2-bit K-quant (256-element super-blocks).
    Q2_K = 10,
    /// 3-bit K-quant.
    Q3_K = 11,
    /// 4-bit K-quant.
    Q4_K = 12,
    /// 5-bit K-quant.
    Q5_K = 13,
    /// 6-bit K-quant.
    Q6_K = 14,
    /// 8-bit K-quant with f32 scale and block sums (activations).
    Q8_K = 15,
    /// i-quant, 2.06 bpw.
    IQ2_XXS = 16,
    /// i-quant, 2.31 bpw.
    IQ2_XS = 17,
    /// i-quant, 3.06 bpw.
    IQ3_XXS = 18,
    /// i-quant, 1.56 bpw.
    IQ1_S = 19,
    /// non-linear 4-bit, 32-element blocks.
    IQ4_NL = 20,
    /// i-quant, 3.44 bpw.
    IQ3_S = 21,
    /// i-quant, 2.5 bpw.
    IQ2_S = 22,
    /// non-linear 4-bit, 256-element super-blocks.
    IQ4_XS = 23,
    /// 8-bit integer.
    I8 = 24,
    /// 16-bit integer.
    I16 = 25,
    /// 32-bit integer.
    I32 = 26,
    /// 64-bit integer.
    I64 = 27,
    /// 64-bit IEEE float.
    F64 = 28,
    /// i-quant, 1.75 bpw.
    IQ1_M = 29,
    /// bfloat16.
    BF16 = 30,
    /// ternary, 1.69 bpw.
    TQ1_0 = 34,
    /// ternary, 2.06 bpw.
    TQ2_0 = 35,
    /// microscaling FP4 (e2m1 values, e8m0 scale per 32 elements).
    MXFP4 = 39,
}

impl GgmlType {
    /// Every known type, in id order.
    ///
    /// ```
    /// use hearth_quant::GgmlType;
    /// assert!(GgmlType::ALL.iter().all(|t| GgmlType::from_id(t.id()) == Some(*t)));
    /// ```
    pub const ALL: [GgmlType; 32] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
    ];

    /// The type for a GGUF type id, or `None` if the id is unknown (or a removed type).
    ///
    /// ```
    /// use hearth_quant::GgmlType;
    /// assert_eq!(GgmlType::from_id(8), Some(GgmlType::Q8_0));
    /// assert_eq!(GgmlType::from_id(4), None); // removed Q4_2
    /// ```
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The GGUF type id.
    ///
    /// ```
    /// assert_eq!(hearth_quant::GgmlType::BF16.id(), 30);
    /// ```
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Elements per block.
    ///
    /// ```
    /// assert_eq!(hearth_quant::GgmlType::Q8_0.block_size(), 32);
    /// ```
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    ///
    /// ```
    /// assert_eq!(hearth_quant::GgmlType::Q6_K.type_size(), 210);
    /// ```
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 40,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 | F64 => 8,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
        }
    }

    /// The ggml name, e.g. `"Q4_K"`.
    ///
    /// ```
    /// assert_eq!(hearth_quant::GgmlType::Q5_1.name(), "Q5_1");
    /// ```
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
        }
    }

    /// The type with this ggml name (case-insensitive), e.g. `"q4_k"`.
    ///
    /// ```
    /// use hearth_quant::GgmlType;
    /// assert_eq!(GgmlType::from_name("q4_k"), Some(GgmlType::Q4_K));
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Whether the type is block-quantized (block size > 1).
    ///
    /// ```
    /// assert!(hearth_quant::GgmlType::Q4_0.is_quantized());
    /// assert!(!hearth_quant::GgmlType::BF16.is_quantized());
    /// ```
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Whether [`crate::dequantize`] supports this type.
    ///
    /// ```
    /// use hearth_quant::GgmlType;
    /// assert!(GgmlType::Q3_K.can_dequantize());
    /// assert!(!GgmlType::IQ2_XXS.can_dequantize());
    /// ```
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K
        )
    }

    /// Whether [`crate::quantize`] supports this type (same set as dequantization).
    ///
    /// ```
    /// assert!(hearth_quant::GgmlType::Q6_K.can_quantize());
    /// ```
    pub fn can_quantize(self) -> bool {
        self.can_dequantize()
    }

    /// Bytes taken by `n_elements` elements, or `None` if `n_elements` is not a whole
    /// number of blocks or the size overflows.
    ///
    /// ```
    /// use hearth_quant::GgmlType;
    /// assert_eq!(GgmlType::Q8_0.row_bytes(64), Some(68));
    /// assert_eq!(GgmlType::Q8_0.row_bytes(33), None);
    /// ```
    pub fn row_bytes(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
