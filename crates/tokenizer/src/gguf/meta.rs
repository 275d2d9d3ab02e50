//! Typed, error-reporting reads of GGUF metadata values (`tokenizer.ggml.*`) and the vocabulary
//! arrays. A missing required key is [`TokenizerError::MissingMetadata`]; a key with the wrong
//! type or an out-of-range value is [`TokenizerError::InvalidMetadata`] naming the key.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::error::{Result, TokenizerError};

pub(crate) struct Meta<'a> {
    metadata: &'a HashMap<String, Value>,
}

impl<'a> Meta<'a> {
    pub fn new(metadata: &'a HashMap<String, Value>) -> Self {
        Self { metadata }
    }

    fn require(&self, key: &str) -> Result<&'a Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| TokenizerError::MissingMetadata { key: key.to_string() })
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(wrong_type(key, "a string", other)),
        }
    }

    pub fn require_string(&self, key: &str) -> Result<&'a str> {
        self.string(key)?
            .ok_or_else(|| TokenizerError::MissingMetadata { key: key.to_string() })
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(key, "a bool", other)),
        }
    }

    /// An unsigned token id or count stored as any integer type.
    pub fn u32(&self, key: &str) -> Result<Option<u32>> {
        self.metadata.get(key).map(|v| integer_as_u32(key, v)).transpose()
    }

    pub fn require_strings(&self, key: &str) -> Result<Vec<&'a str>> {
        array(key, self.require(key)?)?
            .iter()
            .enumerate()
            .map(|(idx, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(wrong_type(key, &format!("strings (element {idx})"), other)),
            })
            .collect()
    }

    pub fn require_f32s(&self, key: &str) -> Result<Vec<f32>> {
        array(key, self.require(key)?)?
            .iter()
            .enumerate()
            .map(|(idx, v)| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                other => Err(wrong_type(key, &format!("floats (element {idx})"), other)),
            })
            .collect()
    }

    pub fn i32s(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(value) = self.metadata.get(key) else {
            return Ok(None);
        };
        array(key, value)?
            .iter()
            .map(|v| integer_as_i64(key, v).map(|x| x as i32))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn array<'v>(key: &str, value: &'v Value) -> Result<&'v Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(wrong_type(key, "an array", other)),
    }
}

fn integer_as_i64(key: &str, value: &Value) -> Result<i64> {
    Ok(match value {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::I64(x) => *x,
        Value::U64(x) => i64::try_from(*x)
            .map_err(|_| TokenizerError::invalid_metadata(key, format!("{x} does not fit in 64 bits")))?,
        other => return Err(wrong_type(key, "an integer", other)),
    })
}

fn integer_as_u32(key: &str, value: &Value) -> Result<u32> {
    let x = integer_as_i64(key, value)?;
    u32::try_from(x).map_err(|_| TokenizerError::invalid_metadata(key, format!("{x} is not a valid token id")))
}

fn wrong_type(key: &str, expected: &str, got: &Value) -> TokenizerError {
    TokenizerError::invalid_metadata(key, format!("expected {expected}, found {:?}", got.value_type()))
}
