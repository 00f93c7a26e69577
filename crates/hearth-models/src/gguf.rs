//! GGUF checkpoints as a [`crate::TensorSource`] and a [`crate::ModelConfig`].
