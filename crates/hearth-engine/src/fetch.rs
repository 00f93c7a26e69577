//! Obtaining the default real model (SmolLM2-135M-Instruct) on first use.
