//! Tokenizers and chat templates read from GGUF metadata.
