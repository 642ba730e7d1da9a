//! Optional capture of named intermediate tensors (parity tests, debugging).

use std::collections::HashMap;

use candle_core::Tensor;

/// Collects intermediates by name when enabled; a no-op otherwise (the default).
#[derive(Debug, Default)]
pub struct Trace {
    tensors: Option<HashMap<String, Tensor>>,
}

impl Trace {
    /// A trace that records.
    pub fn enabled() -> Self {
        Self {
            tensors: Some(HashMap::new()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.tensors.is_some()
    }

    /// Records `t` under `name` (tensors are reference-counted: no copy).
    pub fn record(&mut self, name: impl Into<String>, t: &Tensor) {
        if let Some(map) = self.tensors.as_mut() {
            map.insert(name.into(), t.clone());
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.as_ref().and_then(|m| m.get(name))
    }

    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.tensors.unwrap_or_default()
    }
}
