//! Conversion of GGUF checkpoints to the HuggingFace layout.
